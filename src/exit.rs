//! The process's exit statuses, chosen in one place for every mode.

/// Success.
pub const EXIT_OK: i32 = 0;
/// Failures other than configuration.
pub const EXIT_FAILURE: i32 = 1;
/// A configuration error (sysexits' EX_CONFIG): one line names the variable.
pub const EXIT_CONFIG: i32 = 78;
