//! `backup-push`: one non-exclusive base backup of the local primary, in
//! WAL-G's layout. Order (reference §1.3): data parts → `pg_control` part
//! → `pg_backup_stop` (waits for the stop segment to be archived; checked
//! in the bucket too) → `backup_label` part → `metadata.json` →
//! `files_metadata.json` → the sentinel, last, only after S3 confirmed
//! everything. Anything failing or a cancel before that leaves no
//! sentinel: the backup does not exist, and the next one is unaffected.
//!
//! The backup runs on a thread of its own with its own runtime and S3
//! client ([`spawn`]): compression threads and uploads never share the
//! caller's runtime, which in the supervisor also runs the HA loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::sentinel::{DATE_FMT, FilesMetadata, Metadata, PartInfo, Sentinel};
use super::tarball::{self, Msg};
use super::{BackupError, Cancel, Progress, walk};
use crate::config::Config;
use crate::postgres::wal::{SegmentName, parse_lsn};
use crate::storage::codec;
use crate::storage::layout::{self, Layout};
use crate::storage::s3::{Multipart, ObjectStore, PartTag};

/// Size of each multipart part uploaded.
const UPLOAD_PART: usize = 8 << 20;
/// Parts in flight at most (memory: this many × [`UPLOAD_PART`]).
const MAX_PARTS_IN_FLIGHT: usize = 4;
/// How long `pg_backup_stop` may wait for the stop segment's archiving.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// Progress in the log at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A finished backup, as the log, `/patroni` and `/metrics` report it.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    pub name: String,
    pub start_lsn: String,
    pub finish_lsn: String,
    pub timeline: u32,
    /// Bytes of files read.
    pub data_size: u64,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub start_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finish_time: OffsetDateTime,
    pub duration_s: f64,
    pub corrupt_blocks: u64,
}

/// Runs one backup on a new thread; the answer comes through the receiver
/// (a closed receiver means the thread died).
pub fn spawn(
    cfg: Config,
    progress: Arc<Progress>,
    cancel: Arc<Cancel>,
) -> oneshot::Receiver<Result<Pushed, BackupError>> {
    let (tx, rx) = oneshot::channel();
    let started = std::thread::Builder::new().name("tusk-backup".into()).spawn(move || {
        let r = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run(&cfg, &progress, &cancel)),
            Err(e) => Err(BackupError::Internal(format!("cannot build the backup's runtime: {e}"))),
        };
        let _ = tx.send(r);
    });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the backup thread");
    }
    rx
}

/// Facts about the server, read once before the backup starts.
struct Server {
    version_num: u32,
    data_checksums: bool,
    data_directory: String,
    system_identifier: u64,
    seg_size: u64,
}

async fn server_facts(client: &tokio_postgres::Client, cfg: &Config) -> Result<Server, BackupError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int4, \
             current_setting('data_checksums'), current_setting('data_directory'), \
             (SELECT system_identifier FROM pg_control_system())::text, \
             (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await?;
    if row.get::<_, bool>(0) {
        return Err(BackupError::Refused(
            "PostgreSQL is in recovery (a replica): base backups are taken on the primary".into(),
        ));
    }
    let data_directory: String = row.get(3);
    let ours = std::fs::canonicalize(&cfg.postgres.data).unwrap_or_else(|_| cfg.postgres.data.clone());
    let theirs = std::fs::canonicalize(&data_directory).unwrap_or_else(|_| data_directory.clone().into());
    if ours != theirs {
        return Err(BackupError::Refused(format!(
            "the server on the socket serves {data_directory}, not PGDATA {}",
            cfg.postgres.data.display()
        )));
    }
    let sysid: String = row.get(4);
    Ok(Server {
        version_num: row.get::<_, i32>(1).max(0) as u32,
        data_checksums: row.get::<_, String>(2) == "on",
        data_directory,
        system_identifier: sysid.parse::<i64>().map(|v| v as u64).unwrap_or(0),
        seg_size: row.get::<_, Option<i64>>(5).filter(|s| *s > 0).unwrap_or(16 << 20) as u64,
    })
}

pub async fn run(cfg: &Config, progress: &Arc<Progress>, cancel: &Arc<Cancel>) -> Result<Pushed, BackupError> {
    let storage = cfg
        .storage
        .as_ref()
        .ok_or_else(|| BackupError::Refused("no storage is configured (WAL_S3_BUCKET or WALG_S3_PREFIX)".into()))?;
    let settings = &storage.backup;
    let store = ObjectStore::new(storage).await?;
    let layout = Layout::new(&storage.root);
    let client = crate::postgres::sql::connect(cfg).await?;
    let server = server_facts(&client, cfg).await?;
    let verify = match settings.verify_page_checksums {
        Some(true) if !server.data_checksums => {
            tracing::warn!("WALG_VERIFY_PAGE_CHECKSUMS is set but the cluster has no data checksums; not verifying");
            false
        }
        Some(v) => v,
        None => server.data_checksums,
    };

    let t0 = Instant::now();
    let start_time = OffsetDateTime::now_utc();
    let label = format!("tusk {}", start_time.unix_timestamp());
    let start_sql = if server.version_num >= 150_000 {
        "SELECT pg_backup_start($1, true)::text"
    } else {
        "SELECT pg_start_backup($1, true, false)::text"
    };
    let start_lsn_text: String = client.query_one(start_sql, &[&label]).await?.get(0);
    let start_lsn = parse_lsn(&start_lsn_text)
        .ok_or_else(|| BackupError::Internal(format!("pg_backup_start returned {start_lsn_text:?}")))?;
    let timeline =
        client.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).await?.get::<_, i32>(0) as u32;
    let name = layout::backup_name(&SegmentName::of_lsn(timeline, start_lsn, server.seg_size).to_string());
    if store.head(&layout.sentinel_key(&name)).await?.is_some() {
        return Err(BackupError::Refused(format!("backup {name} already exists")));
    }
    tracing::info!(backup = %name, start_lsn = %start_lsn_text, timeline, verify_checksums = verify, "base backup started");

    // Producer: walk, tar, compress (threads); uploader: here.
    let opts = tarball::Options {
        compression: settings.compression,
        threads: settings.compress_threads,
        tar_size_threshold: settings.tar_size_threshold,
        verify_from_lsn: verify.then_some(start_lsn),
        disk_rate_limit: settings.disk_rate_limit,
    };
    let (tx, rx) = mpsc::channel(settings.compress_threads + 2);
    let (done_tx, done_rx) = oneshot::channel();
    let pgdata = cfg.postgres.data.clone();
    let (p, c) = (progress.clone(), cancel.clone());
    std::thread::Builder::new()
        .name("tusk-backup-tar".into())
        .spawn(move || {
            let r = walk::walk(&pgdata).map_err(|source| BackupError::Read { path: pgdata.clone(), source }).and_then(
                |w| {
                    p.total.store(w.total_bytes, Ordering::Relaxed);
                    let spec = w.spec.clone();
                    tarball::produce(w, &opts, tx, &c, &p).map(|out| (out, spec))
                },
            );
            let _ = done_tx.send(r);
        })
        .map_err(|e| BackupError::Internal(format!("cannot start the tar thread: {e}")))?;

    let concurrency = storage.upload_concurrency.clamp(1, MAX_PARTS_IN_FLIGHT);
    let uploads = upload_parts(&store, &layout, &name, rx, progress, concurrency);
    let ticker = report_progress(&name, progress, t0);
    let uploaded = tokio::select! {
        r = uploads => r,
        () = ticker => Err(BackupError::Internal("the progress ticker ended".into())),
        () = cancel.cancelled() => Err(BackupError::Cancelled(cancel.reason())),
    };
    let mut parts = match uploaded {
        Ok(p) => p,
        Err(e) => {
            // Stops the producer too: its sends fail or it sees the flag.
            cancel.cancel(&e.to_string());
            let _ = done_rx.await;
            return Err(e);
        }
    };
    let (produced, spec) = done_rx.await.map_err(|_| BackupError::Internal("the tar thread died".into()))??;
    cancel.check()?;

    // Stop: waits until the stop segment is archived.
    let stop_sql = if server.version_num >= 150_000 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)"
    };
    let row = tokio::select! {
        r = tokio::time::timeout(STOP_TIMEOUT, client.query_one(stop_sql, &[])) => r.map_err(|_| BackupError::Cancelled(format!(
            "pg_backup_stop did not return within {}s: is WAL archiving working?", STOP_TIMEOUT.as_secs()
        )))??,
        () = cancel.cancelled() => return Err(BackupError::Cancelled(cancel.reason())),
    };
    let finish_lsn_text: String = row.get(0);
    let labelfile: String = row.get(1);
    let spcmapfile: Option<String> = row.get(2);
    let finish_lsn = parse_lsn(&finish_lsn_text)
        .ok_or_else(|| BackupError::Internal(format!("pg_backup_stop returned {finish_lsn_text:?}")))?;
    let stop_seg = SegmentName::of_lsn(timeline, finish_lsn.saturating_sub(1), server.seg_size).to_string();
    let found = store.list_first(&format!("{}{stop_seg}", layout.wal_prefix()), 10).await?;
    if found.is_empty() {
        return Err(BackupError::Refused(format!(
            "the stop segment {stop_seg} is not in the archive; the backup would not be restorable"
        )));
    }

    // backup_label (+ tablespace_map), as pg_backup_stop gave them.
    let ext = settings.compression.extension();
    let label_file = layout::tar_file("backup_label", ext);
    let mut label_tar = tar::Builder::new(Vec::new());
    let mut members = vec!["backup_label".to_owned()];
    append_bytes(&mut label_tar, "backup_label", labelfile.as_bytes())?;
    if let Some(map) = spcmapfile.as_deref().filter(|m| !m.is_empty()) {
        append_bytes(&mut label_tar, "tablespace_map", map.as_bytes())?;
        members.push("tablespace_map".into());
    }
    let label_tar = label_tar.into_inner().map_err(|e| BackupError::Internal(format!("tar: {e}")))?;
    let label_obj = codec::compress(settings.compression, &label_tar[..], label_tar.len())?;
    parts.insert(
        label_file.clone(),
        PartInfo { size: label_obj.len() as u64, xxh3: hex64(xxhash_rust::xxh3::xxh3_64(&label_obj)) },
    );
    store.put(&layout.tar_partition_key(&name, &label_file), label_obj, &[]).await?;
    let mut files_metadata =
        FilesMetadata { files: produced.files, tar_file_sets: produced.tar_file_sets, ..Default::default() };
    files_metadata.tar_file_sets.insert(label_file, members);

    let finish_time = OffsetDateTime::now_utc();
    let compressed_size: u64 = parts.values().map(|p| p.size).sum();
    let uncompressed_size = produced.uncompressed + label_tar.len() as u64;
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let metadata = Metadata {
        start_time,
        finish_time,
        date_fmt: DATE_FMT.into(),
        hostname: hostname.clone(),
        data_dir: server.data_directory.clone(),
        pg_version: server.version_num,
        start_lsn,
        finish_lsn,
        is_permanent: false,
        system_identifier: Some(server.system_identifier),
        uncompressed_size: uncompressed_size as i64,
        compressed_size: compressed_size as i64,
        user_data: None,
    };
    let sentinel = Sentinel {
        lsn: Some(start_lsn),
        delta_lsn: None,
        delta_from: None,
        delta_full_name: None,
        delta_count: None,
        pg_version: server.version_num,
        finish_lsn: Some(finish_lsn),
        system_identifier: Some(server.system_identifier),
        uncompressed_size: uncompressed_size as i64,
        compressed_size: compressed_size as i64,
        data_catalog_size: Some(produced.data_catalog_size as i64),
        spec,
        user_data: None,
        files_metadata_disabled: false,
        chkp_num: None,
        version: 2,
        start_time: Some(start_time),
        finish_time: Some(finish_time),
        date_fmt: DATE_FMT.into(),
        hostname,
        data_dir: server.data_directory.clone(),
        is_permanent: false,
        tusk_parts: parts,
        tusk_timeline: Some(timeline),
    };
    let json = |v: &dyn erased::Json| v.to_json();
    cancel.check()?;
    store.put(&layout.metadata_key(&name), json(&metadata), &[]).await?;
    store.put(&layout.files_metadata_key(&name), json(&files_metadata), &[]).await?;
    cancel.check()?;
    store.put(&layout.sentinel_key(&name), json(&sentinel), &[]).await?;
    let duration = t0.elapsed();
    let pushed = Pushed {
        name,
        start_lsn: start_lsn_text,
        finish_lsn: finish_lsn_text,
        timeline,
        data_size: produced.data_catalog_size,
        uncompressed_size,
        compressed_size,
        start_time,
        finish_time,
        duration_s: duration.as_secs_f64(),
        corrupt_blocks: produced.corrupt_blocks,
    };
    tracing::info!(
        backup = %pushed.name,
        data_mb = pushed.data_size >> 20,
        compressed_mb = pushed.compressed_size >> 20,
        duration_s = format!("{:.1}", pushed.duration_s),
        corrupt_blocks = pushed.corrupt_blocks,
        "base backup complete"
    );
    Ok(pushed)
}

mod erased {
    /// Serializes what goes to S3 as JSON (every type here serializes).
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("backup metadata serializes: strings, numbers, maps")
        }
    }
}

fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

fn append_bytes(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> Result<(), BackupError> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).map_err(|e| BackupError::Internal(format!("tar: {e}")))
}

/// Logs bytes, rate and ETA every [`PROGRESS_EVERY`]; never returns.
async fn report_progress(name: &str, progress: &Progress, t0: Instant) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let total = progress.total.load(Ordering::Relaxed);
        let read = progress.read.load(Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        let rate = read as f64 / secs;
        let eta = if rate > 0.0 { (total.saturating_sub(read)) as f64 / rate } else { f64::NAN };
        tracing::info!(
            backup = %name,
            read_mb = read >> 20,
            total_mb = total >> 20,
            uploaded_mb = progress.uploaded.load(Ordering::Relaxed) >> 20,
            rate_mb_s = format!("{:.1}", rate / 1048576.0),
            eta_s = format!("{eta:.0}"),
            "base backup in progress"
        );
    }
}

/// Uploads every part the producer sends, each as one object (multipart,
/// `concurrency` parts in flight), hashing as it goes.
async fn upload_parts(
    store: &ObjectStore,
    layout: &Layout,
    name: &str,
    mut rx: mpsc::Receiver<Msg>,
    progress: &Progress,
    concurrency: usize,
) -> Result<BTreeMap<String, PartInfo>, BackupError> {
    let protocol = |what: &str| BackupError::Internal(format!("backup pipeline: {what}"));
    let mut parts = BTreeMap::new();
    while let Some(msg) = rx.recv().await {
        let Msg::Begin(file) = msg else { return Err(protocol("data before a part began")) };
        let mut obj = ObjectUpload::new(store, layout.tar_partition_key(name, &file), concurrency);
        let r = async {
            loop {
                match rx.recv().await {
                    Some(Msg::Chunk(chunk)) => {
                        let bytes = chunk.await.map_err(|_| protocol("a compression thread died"))??;
                        obj.write(bytes, progress).await?;
                    }
                    Some(Msg::End) => return obj.finish(progress).await,
                    Some(Msg::Begin(_)) => return Err(protocol("a part began inside another")),
                    // The producer failed; its own error is the one reported.
                    None => return Err(BackupError::Cancelled("the tar thread stopped".into())),
                }
            }
        }
        .await;
        match r {
            Ok(info) => {
                tracing::debug!(backup = %name, part = %file, size = info.size, "part uploaded");
                parts.insert(file, info);
            }
            Err(e) => {
                obj.abort().await;
                return Err(e);
            }
        }
    }
    Ok(parts)
}

/// One object being uploaded while it is produced.
struct ObjectUpload<'a> {
    store: &'a ObjectStore,
    key: String,
    buf: Vec<u8>,
    hasher: xxhash_rust::xxh3::Xxh3,
    size: u64,
    multipart: Option<Multipart>,
    in_flight: JoinSet<Result<(PartTag, u64), BackupError>>,
    done: Vec<PartTag>,
    concurrency: usize,
}

impl<'a> ObjectUpload<'a> {
    fn new(store: &'a ObjectStore, key: String, concurrency: usize) -> ObjectUpload<'a> {
        ObjectUpload {
            store,
            key,
            buf: Vec::with_capacity(UPLOAD_PART + tarball::CHUNK),
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            size: 0,
            multipart: None,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            concurrency,
        }
    }

    async fn write(&mut self, bytes: Vec<u8>, progress: &Progress) -> Result<(), BackupError> {
        self.hasher.update(&bytes);
        self.size += bytes.len() as u64;
        if self.buf.is_empty() && bytes.len() >= UPLOAD_PART {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
        if self.buf.len() >= UPLOAD_PART {
            self.send_part(progress).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, progress: &Progress) -> Result<(), BackupError> {
        if self.multipart.is_none() {
            self.multipart = Some(self.store.create_multipart(&self.key).await?);
        }
        while self.in_flight.len() >= self.concurrency {
            self.join_one(progress).await?;
        }
        let mp = self.multipart.clone().expect("created above");
        let number = (self.done.len() + self.in_flight.len() + 1) as i32;
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(UPLOAD_PART + tarball::CHUNK));
        let len = body.len() as u64;
        self.in_flight
            .spawn(async move { mp.upload_part(number, body).await.map(|t| (t, len)).map_err(BackupError::from) });
        Ok(())
    }

    async fn join_one(&mut self, progress: &Progress) -> Result<(), BackupError> {
        if let Some(r) = self.in_flight.join_next().await {
            let (tag, len) = r.map_err(|e| BackupError::Internal(format!("an upload task failed: {e}")))??;
            progress.uploaded.fetch_add(len, Ordering::Relaxed);
            self.done.push(tag);
        }
        Ok(())
    }

    async fn finish(&mut self, progress: &Progress) -> Result<PartInfo, BackupError> {
        let info = PartInfo { size: self.size, xxh3: hex64(self.hasher.digest()) };
        if self.multipart.is_none() {
            let body = std::mem::take(&mut self.buf);
            let len = body.len() as u64;
            self.store.put(&self.key, body, &[]).await?;
            progress.uploaded.fetch_add(len, Ordering::Relaxed);
            return Ok(info);
        }
        if !self.buf.is_empty() {
            self.send_part(progress).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one(progress).await?;
        }
        let mp = self.multipart.as_ref().expect("multipart above");
        mp.complete(std::mem::take(&mut self.done)).await?;
        Ok(info)
    }

    async fn abort(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(mp) = &self.multipart {
            mp.abort().await;
        }
    }
}
