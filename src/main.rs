//! Entry point: PID 1 becomes the init, anything else runs the command;
//! invoked as `patronictl` (a symlink), patronictl's command line.

use clap::Parser;

fn main() {
    if std::env::args_os().next().is_some_and(|a| tusk::cli::patronictl::invoked_as(&a)) {
        std::process::exit(tusk::cli::patronictl::run(std::env::args_os()));
    }
    let cli = tusk::cli::Cli::parse();
    if cli.is_daemon() {
        // A stop that arrives before the supervisor's handlers exist must
        // wait for them, not kill the process by the default action: held
        // pending here, delivered when `signals::Signals::register` unblocks.
        tusk::signals::block_handled();
    }
    // Checked before any runtime or thread exists: init mode blocks signals
    // for the whole process.
    let code = if cli.is_daemon() && nix::unistd::getpid().as_raw() == 1 {
        tusk::init::run()
    } else {
        tusk::cli::dispatch(cli)
    };
    std::process::exit(code);
}
