//! The producing side of a backup, on threads of its own: the walked
//! files written as tar parts (WAL-G's member names: `/` + the path under
//! PGDATA), cut into chunks that a pool of threads compresses in parallel
//! ([`ChunkCodec`]), handed to the uploader in order through a bounded
//! channel. Memory is bounded by the chunk size times the chunks in flight,
//! whatever the size of the database.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc as std_mpsc};

use tokio::sync::{mpsc, oneshot};

use super::checksum::{self, BLCKSZ, PageCheck, RELSEG_SIZE};
use super::sentinel::{CorruptBlocks, FileDescription};
use super::walk::{Entry, Kind, Walked};
use super::{BackupError, Cancel, Progress};
use crate::config::Compression;
use crate::storage::codec::{ChunkCodec, Encoder};
use crate::storage::layout;

/// Uncompressed bytes per chunk (one compression job).
pub const CHUNK: usize = 2 << 20;
/// Bytes read from a file at a time (a multiple of the page size).
const READ_BUF: usize = 1 << 20;
/// At most this many corrupt block numbers are listed per file (WAL-G's default).
const MAX_CORRUPT_LISTED: usize = 10;

/// What the producer hands the uploader, in order.
pub enum Msg {
    /// A new object starts (its file name under `tar_partitions/`).
    Begin(String),
    /// The next compressed bytes of the current object.
    Chunk(oneshot::Receiver<Result<Vec<u8>, BackupError>>),
    /// The current object is complete.
    End,
}

pub struct Options {
    pub compression: Compression,
    pub threads: usize,
    pub tar_size_threshold: u64,
    /// Verify page checksums of relation files, skipping pages at or after this LSN.
    pub verify_from_lsn: Option<u64>,
    /// Bytes per second read at most (`WALG_DISK_RATE_LIMIT`).
    pub disk_rate_limit: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Produced {
    pub files: BTreeMap<String, FileDescription>,
    pub tar_file_sets: BTreeMap<String, Vec<String>>,
    /// Bytes of tar written (all parts).
    pub uncompressed: u64,
    /// Sum of the file sizes walked.
    pub data_catalog_size: u64,
    pub corrupt_blocks: u64,
}

/// A compression job: the bytes and where the result goes.
type Job = (Vec<u8>, oneshot::Sender<Result<Vec<u8>, BackupError>>);

/// Writes every part (data parts, then `pg_control.tar.<ext>`), compressing
/// on `opts.threads` threads. Blocks: run it on a thread of its own.
pub fn produce(
    walked: Walked,
    opts: &Options,
    tx: mpsc::Sender<Msg>,
    cancel: &Cancel,
    progress: &Progress,
) -> Result<Produced, BackupError> {
    let codec = ChunkCodec::new(opts.compression);
    let (job_tx, job_rx) = std_mpsc::sync_channel::<Job>(opts.threads.max(1));
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut workers = Vec::new();
    if let Some(codec) = codec {
        for i in 0..opts.threads.max(1) {
            let rx = job_rx.clone();
            let w = std::thread::Builder::new()
                .name(format!("tusk-backup-z{i}"))
                .spawn(move || compress_worker(codec, &rx))
                .map_err(|e| BackupError::Internal(format!("cannot start a compression thread: {e}")))?;
            workers.push(w);
        }
    }
    let ext = opts.compression.extension();
    let mut out = Produced::default();
    let limiter = Limiter { limit: opts.disk_rate_limit, start: std::time::Instant::now(), cancel };
    let mut sink = Sink {
        tx: &tx,
        jobs: &job_tx,
        codec,
        brotli: None,
        buf: Vec::with_capacity(CHUNK),
        written: 0,
        compression: opts.compression,
    };
    let result = (|| {
        let mut part_no = 0u32;
        let mut entries = walked.entries.into_iter().peekable();
        while entries.peek().is_some() {
            part_no += 1;
            let name = layout::part_file(part_no, ext);
            sink.begin(&name)?;
            let mut members = Vec::new();
            let start = sink.written;
            let mut builder = tar::Builder::new(&mut sink);
            for e in entries.by_ref() {
                cancel.check()?;
                add_entry(&mut builder, &e, opts, progress, &limiter, &mut out)?;
                members.push(format!("/{}", e.name));
                if builder.get_ref().written - start >= opts.tar_size_threshold {
                    break;
                }
            }
            builder.into_inner().map_err(|e| BackupError::Internal(format!("tar: {e}")))?;
            sink.end()?;
            out.tar_file_sets.insert(name, members);
        }
        // pg_control last, in its own part (extracted last on restore).
        let name = layout::tar_file("pg_control", ext);
        sink.begin(&name)?;
        let mut builder = tar::Builder::new(&mut sink);
        add_entry(&mut builder, &walked.pg_control, opts, progress, &limiter, &mut out)?;
        builder.into_inner().map_err(|e| BackupError::Internal(format!("tar: {e}")))?;
        sink.end()?;
        out.tar_file_sets.insert(name, vec![format!("/{}", walked.pg_control.name)]);
        Ok(())
    })();
    out.uncompressed = sink.written;
    drop(sink);
    drop(job_tx);
    for w in workers {
        let _ = w.join();
    }
    result.map(|()| out)
}

fn compress_worker(codec: ChunkCodec, rx: &Mutex<std_mpsc::Receiver<Job>>) {
    loop {
        let job = rx.lock().expect("no panics while held").recv();
        let Ok((data, reply)) = job else { return };
        let mut out = Vec::with_capacity(data.len() / 4 + 64);
        let r = codec.chunk(&data, &mut out).map(|()| out).map_err(BackupError::from);
        let _ = reply.send(r);
    }
}

/// One member: header (ustar; names up to 255 bytes through the prefix
/// field) and, for a file, exactly the size `stat` gave before reading:
/// a file that shrank is padded with zeros, one that grew is cut (WAL
/// replay repairs both, as for WAL-G and pg_basebackup).
fn add_entry(
    builder: &mut tar::Builder<&mut Sink>,
    e: &Entry,
    opts: &Options,
    progress: &Progress,
    limiter: &Limiter,
    out: &mut Produced,
) -> Result<(), BackupError> {
    let mut h = tar::Header::new_ustar();
    set_name(&mut h, &format!("/{}", e.name))?;
    h.set_mode(e.mode);
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    let tar_err = |source: std::io::Error| BackupError::Read { path: e.path.clone(), source };
    match e.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_cksum();
            builder.append(&h, std::io::empty()).map_err(tar_err)?;
        }
        Kind::File { size } => {
            let file = match File::open(&e.path) {
                Ok(f) => Some(f),
                // Dropped since the walk: left out (WAL replay agrees).
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(BackupError::Read { path: e.path.clone(), source }),
            };
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_cksum();
            let verify = opts
                .verify_from_lsn
                .and_then(|lsn| checksum::relation_segment(&e.name).map(|seg| (lsn, seg)))
                .filter(|_| size % BLCKSZ as u64 == 0);
            let mut reader = FileReader {
                file,
                remaining: size,
                buf: vec![0; READ_BUF.min(size as usize).max(1)],
                pos: 0,
                len: 0,
                offset: 0,
                verify,
                corrupt: Vec::new(),
                corrupt_count: 0,
                progress,
                limiter,
            };
            builder.append(&h, &mut reader).map_err(tar_err)?;
            out.data_catalog_size += size;
            out.corrupt_blocks += reader.corrupt_count;
            if reader.corrupt_count > 0 {
                tracing::error!(
                    file = %e.name,
                    corrupt_blocks = reader.corrupt_count,
                    blocks = ?reader.corrupt,
                    "page checksum mismatch: the backup holds the pages as read; check the storage of this node"
                );
            }
            let mtime = time::OffsetDateTime::from_unix_timestamp(e.mtime).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                + time::Duration::nanoseconds(e.mtime_nsec);
            let corrupt_blocks = (reader.corrupt_count > 0)
                .then(|| CorruptBlocks { count: reader.corrupt_count, some: reader.corrupt.clone() });
            out.files.insert(
                format!("/{}", e.name),
                FileDescription { is_incremented: false, is_skipped: false, mtime, corrupt_blocks, updates_count: 0 },
            );
        }
    }
    Ok(())
}

/// ustar name and prefix fields (100 + 155 bytes, split at a `/`).
fn set_name(h: &mut tar::Header, name: &str) -> Result<(), BackupError> {
    let bytes = name.as_bytes();
    let ustar = h.as_ustar_mut().expect("a ustar header");
    if bytes.len() <= 100 {
        ustar.name[..bytes.len()].copy_from_slice(bytes);
        return Ok(());
    }
    let split = bytes[..bytes.len().min(156)]
        .iter()
        .rposition(|b| *b == b'/')
        .filter(|&i| bytes.len() - i - 1 <= 100 && i > 0)
        .ok_or_else(|| BackupError::Internal(format!("path too long for a tar header: {name}")))?;
    ustar.prefix[..split].copy_from_slice(&bytes[..split]);
    ustar.name[..bytes.len() - split - 1].copy_from_slice(&bytes[split + 1..]);
    Ok(())
}

/// A file's bytes in large reads, padded to the size given, with page
/// checksums checked on the way.
struct FileReader<'a> {
    file: Option<File>,
    remaining: u64,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Offset in the file of `buf[0]`.
    offset: u64,
    /// (skip pages at or after this LSN, relation segment number)
    verify: Option<(u64, u32)>,
    corrupt: Vec<u32>,
    corrupt_count: u64,
    progress: &'a Progress,
    limiter: &'a Limiter<'a>,
}

/// Paces reads to `WALG_DISK_RATE_LIMIT` and notices a cancel inside large
/// files (checked at every read of up to 1 MiB).
struct Limiter<'a> {
    limit: Option<u64>,
    start: std::time::Instant,
    cancel: &'a Cancel,
}

impl Limiter<'_> {
    fn pace(&self, read_so_far: u64) -> std::io::Result<()> {
        self.cancel.check().map_err(std::io::Error::other)?;
        if let Some(limit) = self.limit {
            let due = std::time::Duration::from_secs_f64(read_so_far as f64 / limit as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }
}

impl FileReader<'_> {
    fn refill(&mut self) -> std::io::Result<()> {
        self.offset += self.len as u64;
        let n = (self.remaining as usize).min(self.buf.len());
        let mut got = 0;
        if let Some(f) = self.file.as_mut() {
            while got < n {
                match f.read(&mut self.buf[got..n]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if got < n {
                self.file = None;
            }
        }
        self.buf[got..n].fill(0);
        if let Some((lsn, seg)) = self.verify {
            for (i, page) in self.buf[..got - got % BLCKSZ].chunks_exact(BLCKSZ).enumerate() {
                let in_file = (self.offset / BLCKSZ as u64) as u32 + i as u32;
                let blkno = seg.wrapping_mul(RELSEG_SIZE).wrapping_add(in_file);
                let page: &[u8; BLCKSZ] = page.try_into().expect("chunks_exact");
                if checksum::check_page(page, blkno, lsn) == PageCheck::Corrupt {
                    self.corrupt_count += 1;
                    if self.corrupt.len() < MAX_CORRUPT_LISTED {
                        self.corrupt.push(in_file);
                    }
                }
            }
        }
        self.remaining -= n as u64;
        self.pos = 0;
        self.len = n;
        let total = self.progress.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        self.limiter.pace(total)
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.len {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Where tar bytes go: chunks to the compression pool, the results to the
/// uploader in order. Brotli (no independent chunks) compresses here.
struct Sink<'a> {
    tx: &'a mpsc::Sender<Msg>,
    jobs: &'a std_mpsc::SyncSender<Job>,
    codec: Option<ChunkCodec>,
    brotli: Option<Encoder<Vec<u8>>>,
    buf: Vec<u8>,
    /// Tar bytes written so far (all parts).
    written: u64,
    compression: Compression,
}

fn gone() -> BackupError {
    BackupError::Cancelled("the uploader stopped".into())
}

impl Sink<'_> {
    fn send(&self, m: Msg) -> Result<(), BackupError> {
        self.tx.blocking_send(m).map_err(|_| gone())
    }

    fn ready(&self, bytes: Vec<u8>) -> Result<(), BackupError> {
        let (t, r) = oneshot::channel();
        let _ = t.send(Ok(bytes));
        self.send(Msg::Chunk(r))
    }

    fn begin(&mut self, name: &str) -> Result<(), BackupError> {
        self.send(Msg::Begin(name.to_owned()))?;
        match self.codec {
            Some(c) => {
                let h = c.header();
                if !h.is_empty() {
                    self.ready(h)?;
                }
            }
            None => self.brotli = Some(Encoder::new(self.compression, Vec::new())?),
        }
        Ok(())
    }

    /// Sends the buffered bytes for compression.
    fn flush_chunk(&mut self) -> Result<(), BackupError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        match &mut self.brotli {
            Some(enc) => {
                enc.write_all(&data).map_err(|e| BackupError::Internal(format!("brotli: {e}")))?;
                let out = match enc {
                    Encoder::Brotli(w) => std::mem::take(w.get_mut()),
                    _ => Vec::new(),
                };
                if !out.is_empty() {
                    self.ready(out)?;
                }
            }
            None => {
                let (t, r) = oneshot::channel();
                self.jobs.send((data, t)).map_err(|_| gone())?;
                self.send(Msg::Chunk(r))?;
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), BackupError> {
        self.flush_chunk()?;
        if let Some(enc) = self.brotli.take() {
            let rest = enc.finish()?;
            if !rest.is_empty() {
                self.ready(rest)?;
            }
        } else if let Some(c) = self.codec {
            let t = c.trailer();
            if !t.is_empty() {
                self.ready(t)?;
            }
        }
        self.send(Msg::End)
    }
}

impl Write for &mut Sink<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == CHUNK {
            self.flush_chunk().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
