//! Object storage for WAL archiving now and base backups next: one S3
//! client that streams ([`s3::ObjectStore`]: put from an `AsyncRead` with
//! multipart, get as a stream, list), WAL-G's key layout in one place
//! ([`layout`]), and the codecs with streaming encoders ([`codec`]; the
//! lzop container WAL-E wrote is read by [`lzop`]).
//! [`wal::WalStore`] is the WAL archive's view: the store plus the layout.

pub mod codec;
pub mod layout;
pub mod lzop;
pub mod s3;
pub mod wal;
