//! What the bucket holds: completed backups (those with a sentinel).
