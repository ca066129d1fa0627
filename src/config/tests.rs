//! Table tests: environment map → configuration or the variable in error.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::*;

fn host() -> HostFacts {
    HostFacts { hostname: "node-a".into(), address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), memory_bytes: 8 << 30 }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_map(&env(pairs), &host())
}

/// A directory with a CA, a certificate and key, and junk, for file checks.
struct Pems {
    dir: tempfile::TempDir,
}

impl Pems {
    fn new() -> Pems {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("both.pem"), format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
        std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
        Pems { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
fn defaults_are_spilos() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.scope, "dummy");
    assert_eq!(c.namespace, "service");
    assert_eq!(c.name, "node-a");
    assert_eq!(c.postgres.version, 15);
    assert_eq!(c.postgres.home, Path::new("/home/postgres"));
    assert_eq!(c.postgres.root, Path::new("/home/postgres/pgdata/pgroot"));
    assert_eq!(c.postgres.data, Path::new("/home/postgres/pgdata/pgroot/data"));
    assert_eq!(c.postgres.port, 5432);
    assert_eq!(c.api.port, 8008);
    assert_eq!(c.postgres.connect_address, "10.0.0.7:5432");
    assert_eq!(c.api.connect_address, "10.0.0.7:8008");
    assert_eq!(c.credentials.superuser.name, "postgres");
    assert_eq!(c.credentials.replication.name, "standby");
    assert_eq!(c.credentials.admin.name, "admin");
    assert!(c.credentials.superuser.password.is_none(), "no well-known default password");
    assert!(!c.tls.allow_nossl);
    assert!(c.tls.server.is_none());
    assert!(c.standalone());
    assert_eq!(c.tusk.shutdown_timeout, Duration::from_secs(8));
    assert_eq!(c.tusk.log_format, LogFormat::Text);
    // 8 GiB: shared_buffers a quarter, max_connections 8192/30 = 273
    assert_eq!(c.postgres.parameters["shared_buffers"], "2048MB");
    assert_eq!(c.postgres.parameters["max_connections"], "273");
}

#[test]
fn paths_follow_each_other() {
    let c = parse(&[("PGHOME", "/srv/pg")]).unwrap();
    assert_eq!(c.postgres.data, Path::new("/srv/pg/pgdata/pgroot/data"));
    let c = parse(&[("PGROOT", "/r")]).unwrap();
    assert_eq!(c.postgres.data, Path::new("/r/data"));
    let c = parse(&[("PGDATA", "/d"), ("PGROOT", "/r")]).unwrap();
    assert_eq!(c.postgres.data, Path::new("/d"));
}

#[test]
fn memory_derivation_clamps() {
    for (mem_mb, sb, mc) in [(512u64, "128MB", "100"), (2048, "512MB", "100"), (64 << 10, "16384MB", "1000")] {
        let h = HostFacts { memory_bytes: mem_mb << 20, ..host() };
        let c = Config::from_map(&env(&[]), &h).unwrap();
        assert_eq!(c.postgres.parameters["shared_buffers"], sb, "{mem_mb} MB");
        assert_eq!(c.postgres.parameters["max_connections"], mc, "{mem_mb} MB");
    }
}

#[test]
fn aliases_and_names() {
    let c = parse(&[("PATRONI_SCOPE", "superman"), ("PATRONI_NAME", "pg-1"), ("PATRONI_NAMESPACE", "/db/")]).unwrap();
    assert_eq!((c.scope.as_str(), c.name.as_str(), c.namespace.as_str()), ("superman", "pg-1", "db"));
    let c = parse(&[("SCOPE", "a"), ("PATRONI_SCOPE", "a")]).unwrap();
    assert_eq!(c.scope, "a");
}

#[test]
fn secrets_from_files_are_read_and_redacted() {
    let p = Pems::new();
    let c = parse(&[("PGPASSWORD_SUPERUSER_FILE", &p.path("password")), ("PGPASSWORD_STANDBY", "rep")]).unwrap();
    assert_eq!(c.credentials.superuser.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(c.credentials.replication.password.as_ref().unwrap().expose(), "rep");
    let json = c.to_redacted_json();
    assert!(!json.contains("s3cret") && !json.contains("\"rep\""), "{json}");
    assert!(json.contains("<redacted>"));
}

#[test]
fn etcd_host_lists() {
    type Case<'a> = (&'a str, &'a [(&'a str, u16)], EtcdProtocol);
    let cases: &[Case] = &[
        ("10.0.0.1:2379,10.0.0.2:2379", &[("10.0.0.1", 2379), ("10.0.0.2", 2379)], EtcdProtocol::Http),
        ("'10.0.0.1:2379','10.0.0.2:2380'", &[("10.0.0.1", 2379), ("10.0.0.2", 2380)], EtcdProtocol::Http),
        ("\"a:1\", \"b:2\"", &[("a", 1), ("b", 2)], EtcdProtocol::Http),
        ("[ 'a:1' , 'b' ]", &[("a", 1), ("b", 2379)], EtcdProtocol::Http),
        ("https://a:1,https://b:2/", &[("a", 1), ("b", 2)], EtcdProtocol::Https),
        ("[::1]:2379", &[("::1", 2379)], EtcdProtocol::Http),
        ("etcd", &[("etcd", 2379)], EtcdProtocol::Http),
    ];
    for (list, want, proto) in cases {
        let c = parse(&[("ETCD3_HOSTS", list), PW_SUPERUSER, PW_STANDBY]).unwrap_or_else(|e| panic!("{list}: {e}"));
        let e = c.etcd.unwrap();
        let got: Vec<(&str, u16)> = e.endpoints.iter().map(|ep| (ep.host.as_str(), ep.port)).collect();
        assert_eq!(&got, want, "{list}");
        assert_eq!(e.protocol, *proto, "{list}");
    }
    let c = parse(&[("ETCD3_HOST", "127.0.0.1:2379"), PW_SUPERUSER, PW_STANDBY]).unwrap();
    assert_eq!(c.etcd.unwrap().endpoints[0].url(EtcdProtocol::Http), "http://127.0.0.1:2379");
}

#[test]
fn etcd_mtls_files() {
    let p = Pems::new();
    let ok = parse(&[
        ("ETCD3_HOSTS", "10.0.0.1:2379,10.0.0.2:2379"),
        ("ETCD3_PROTOCOL", "https"),
        ("ETCD3_CACERT", &p.path("ca.pem")),
        ("ETCD3_CERT", &p.path("cert.pem")),
        ("ETCD3_KEY", &p.path("key.pem")),
    ])
    .unwrap();
    assert!(!ok.standalone());
    let e = ok.etcd.unwrap();
    assert_eq!(e.protocol, EtcdProtocol::Https);
    // certificate files imply https; key inside the certificate file works
    let c = parse(&[("ETCD3_HOSTS", "a:1"), ("ETCD3_CACERT", &p.path("ca.pem")), ("ETCD3_CERT", &p.path("both.pem"))])
        .unwrap();
    assert_eq!(c.etcd.unwrap().protocol, EtcdProtocol::Https);
    // Patroni's names work as aliases
    let c =
        parse(&[("PATRONI_ETCD3_HOSTS", "a:1"), ("PATRONI_ETCD3_CACERT", &p.path("ca.pem")), PW_SUPERUSER, PW_STANDBY])
            .unwrap();
    assert!(c.etcd.unwrap().cacert.is_some());
}

/// Passwords given for HA over an etcd that does not authenticate clients.
const PW_SUPERUSER: (&str, &str) = ("PGPASSWORD_SUPERUSER", "su-pw");
const PW_STANDBY: (&str, &str) = ("PGPASSWORD_STANDBY", "rep-pw");

/// Over an etcd that authenticates nobody, generated passwords cannot be
/// shared: the superuser's and the replication role's must be given (in
/// any of their forms); with a client certificate or a user they may be
/// generated.
#[test]
fn open_etcd_requires_the_passwords() {
    let p = Pems::new();
    let err = parse(&[("ETCD3_HOSTS", "a:1")]).unwrap_err();
    assert_eq!(err.var, "PGPASSWORD_SUPERUSER");
    assert!(err.message.contains("does not authenticate"), "{err}");
    assert_eq!(parse(&[("ETCD3_HOSTS", "a:1"), PW_SUPERUSER]).unwrap_err().var, "PGPASSWORD_STANDBY");
    // CA only (server verified, clients not): still open.
    let err = parse(&[("ETCD3_HOSTS", "a:1"), ("ETCD3_CACERT", &p.path("ca.pem")), PW_STANDBY]).unwrap_err();
    assert_eq!(err.var, "PGPASSWORD_SUPERUSER");
    let c = parse(&[("ETCD3_HOSTS", "a:1"), PW_SUPERUSER, PW_STANDBY]).unwrap();
    assert!(!c.shares_passwords());
    // Patroni's names and the _FILE forms count.
    let c = parse(&[
        ("ETCD3_HOSTS", "a:1"),
        ("PATRONI_SUPERUSER_PASSWORD", "x"),
        ("PGPASSWORD_STANDBY_FILE", &p.path("password")),
    ])
    .unwrap();
    assert_eq!(c.credentials.replication.password.unwrap().expose(), "s3cret");
    // Authenticated etcd: nothing required.
    let c = parse(&[
        ("ETCD3_HOSTS", "a:1"),
        ("ETCD3_CACERT", &p.path("ca.pem")),
        ("ETCD3_CERT", &p.path("cert.pem")),
        ("ETCD3_KEY", &p.path("key.pem")),
    ])
    .unwrap();
    assert!(c.shares_passwords());
    let c = parse(&[("ETCD3_HOSTS", "a:1"), ("ETCD3_USERNAME", "u"), ("ETCD3_PASSWORD", "p")]).unwrap();
    assert!(c.shares_passwords());
    // Standalone mode shares nothing and needs nothing.
    assert!(!parse(&[]).unwrap().shares_passwords());
}

/// Patroni's role variables: user, password (agreeing with Spilo's if both
/// are set) and sslmode.
#[test]
fn patroni_role_variables() {
    let c = parse(&[
        ("PATRONI_SUPERUSER_USERNAME", "root"),
        ("PATRONI_SUPERUSER_PASSWORD", "a"),
        ("PATRONI_REPLICATION_USERNAME", "replicator"),
        ("PATRONI_REPLICATION_PASSWORD", "b"),
        ("PGPASSWORD_STANDBY", "b"),
        ("PATRONI_REPLICATION_SSLMODE", "prefer"),
    ])
    .unwrap();
    let r = &c.credentials;
    assert_eq!((r.superuser.name.as_str(), r.replication.name.as_str()), ("root", "replicator"));
    assert_eq!(r.superuser.password.as_ref().unwrap().expose(), "a");
    assert_eq!((r.superuser.sslmode.as_str(), r.replication.sslmode.as_str()), ("require", "prefer"));
    let bad = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().var;
    assert_eq!(bad(&[("PGPASSWORD_STANDBY", "a"), ("PATRONI_REPLICATION_PASSWORD", "b")]), "PGPASSWORD_STANDBY");
    assert_eq!(bad(&[("PGUSER_SUPERUSER", "a"), ("PATRONI_SUPERUSER_USERNAME", "b")]), "PGUSER_SUPERUSER");
    assert_eq!(bad(&[("PATRONI_SUPERUSER_SSLMODE", "always")]), "PATRONI_SUPERUSER_SSLMODE");
}

/// Spilo reads etcd v3 first: the v2 variables beside ETCD3_* are ignored
/// with a warning; alone they are refused (tusk speaks only v3).
#[test]
fn etcd_v2_variables_beside_v3_are_ignored() {
    let c = parse(&[
        ("ETCD3_HOSTS", "a:1"),
        ("ETCD_HOST", "b:2379"),
        ("ETCD_URL", "http://c:2379"),
        PW_SUPERUSER,
        PW_STANDBY,
    ])
    .unwrap();
    assert_eq!(c.etcd.unwrap().endpoints[0].host, "a");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("ETCD_HOST is ignored"), "{:?}", c.warnings);
    assert_eq!(parse(&[("ETCD_HOSTS", "b:2379")]).unwrap_err().var, "ETCD_HOSTS");
}

#[test]
fn tls_for_postgres() {
    let p = Pems::new();
    let c =
        parse(&[("SSL_CERTIFICATE_FILE", &p.path("cert.pem")), ("SSL_PRIVATE_KEY_FILE", &p.path("key.pem"))]).unwrap();
    assert!(c.tls.server.is_some());
    let cert = std::fs::read_to_string(p.path("cert.pem")).unwrap();
    let key = std::fs::read_to_string(p.path("key.pem")).unwrap();
    let c = parse(&[("SSL_CERTIFICATE", &cert), ("SSL_PRIVATE_KEY", &key), ("ALLOW_NOSSL", "true")]).unwrap();
    assert!(c.tls.allow_nossl);
    assert!(!c.to_redacted_json().contains("PRIVATE KEY"));
}

#[test]
fn tusk_own_variables() {
    let c = parse(&[
        ("TUSK_SHUTDOWN_TIMEOUT", "1500ms"),
        ("TUSK_LOG_FORMAT", "json"),
        ("TUSK_LOG_LEVEL", "tusk=debug,info"),
    ]);
    assert_eq!(c.unwrap_err().var, "TUSK_SHUTDOWN_TIMEOUT", "below 2s");
    let c =
        parse(&[("TUSK_SHUTDOWN_TIMEOUT", "20"), ("TUSK_LOG_FORMAT", "JSON"), ("TUSK_LOG_LEVEL", "tusk=debug,info")])
            .unwrap();
    assert_eq!(c.tusk.shutdown_timeout, Duration::from_secs(20));
    assert_eq!(c.tusk.log_format, LogFormat::Json);
    let c = parse(&[("TUSK_PG_PARAMETERS", r#"{"shared_buffers": "64MB", "work_mem": 4096, "jit": false}"#)]).unwrap();
    assert_eq!(c.postgres.parameters["shared_buffers"], "64MB");
    assert_eq!(c.postgres.parameters["work_mem"], "4096");
    assert_eq!(c.postgres.parameters["jit"], "off");
    let c = parse(&[("TUSK_BOOTSTRAP_DCS", r#"{"ttl":10,"loop_wait":2,"retry_timeout":5}"#)]).unwrap();
    assert_eq!((c.bootstrap_dcs.ttl, c.bootstrap_dcs.loop_wait, c.bootstrap_dcs.retry_timeout), (10, 2, 5));
    // empty values count as unset
    assert_eq!(parse(&[("PGPORT", "")]).unwrap().postgres.port, 5432);
}

/// Every bad value names its variable.
#[test]
fn bad_values_name_the_variable() {
    let p = Pems::new();
    let missing = "/nonexistent/ca.pem";
    let junk = p.path("junk.pem");
    let ca = p.path("ca.pem");
    let cert = p.path("cert.pem");
    let key = p.path("key.pem");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("PGVERSION", "abc")], "PGVERSION"),
        (vec![("PGVERSION", "99")], "PGVERSION"),
        (vec![("PGVERSION", "9.6")], "PGVERSION"),
        (vec![("PGPORT", "54x2")], "PGPORT"),
        (vec![("PGPORT", "70000")], "PGPORT"),
        (vec![("APIPORT", "0")], "APIPORT"),
        (vec![("APIPORT", "5432")], "APIPORT"),
        (vec![("PGDATA", "relative/dir")], "PGDATA"),
        (vec![("PGROOT", "pgroot")], "PGROOT"),
        (vec![("SCOPE", "a/b")], "SCOPE"),
        (vec![("SCOPE", "a"), ("PATRONI_SCOPE", "b")], "SCOPE"),
        (vec![("PATRONI_NAME", "x y")], "PATRONI_NAME"),
        (vec![("PG_CONNECT_ADDRESS", "nohostport")], "PG_CONNECT_ADDRESS"),
        (vec![("RESTAPI_CONNECT_ADDRESS", "h:port")], "RESTAPI_CONNECT_ADDRESS"),
        (vec![("PGPASSWORD_SUPERUSER", "a"), ("PGPASSWORD_SUPERUSER_FILE", "/x")], "PGPASSWORD_SUPERUSER_FILE"),
        (vec![("PGPASSWORD_ADMIN_FILE", "/nonexistent/pw")], "PGPASSWORD_ADMIN_FILE"),
        (vec![("PGUSER_STANDBY", "postgres")], "PGUSER_STANDBY"),
        (vec![("ALLOW_NOSSL", "maybe")], "ALLOW_NOSSL"),
        (vec![("SSL_CERTIFICATE_FILE", missing), ("SSL_PRIVATE_KEY_FILE", &key)], "SSL_CERTIFICATE_FILE"),
        (vec![("SSL_CERTIFICATE_FILE", &junk), ("SSL_PRIVATE_KEY_FILE", &key)], "SSL_CERTIFICATE_FILE"),
        (vec![("SSL_CERTIFICATE_FILE", &cert), ("SSL_PRIVATE_KEY_FILE", &cert)], "SSL_PRIVATE_KEY_FILE"),
        (vec![("SSL_CERTIFICATE_FILE", &cert)], "SSL_PRIVATE_KEY_FILE"),
        (vec![("SSL_CERTIFICATE", "x"), ("SSL_CERTIFICATE_FILE", &cert)], "SSL_CERTIFICATE_FILE"),
        (vec![("SSL_CA_FILE", &junk)], "SSL_CA_FILE"),
        (vec![("ETCD3_HOSTS", "a:1,,b:2")], "ETCD3_HOSTS"),
        (vec![("ETCD3_HOSTS", "a:notaport")], "ETCD3_HOSTS"),
        (vec![("ETCD3_HOSTS", "'a:1','b:2")], "ETCD3_HOSTS"),
        (vec![("ETCD3_HOSTS", "unix://sock")], "ETCD3_HOSTS"),
        (vec![("ETCD3_HOSTS", "https://a:1"), ("ETCD3_PROTOCOL", "http")], "ETCD3_HOSTS"),
        (vec![("ETCD3_HOSTS", "http://a:1,https://b:1")], "ETCD3_HOSTS"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_HOST", "a:1")], "ETCD3_HOST"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_PROTOCOL", "ftp")], "ETCD3_PROTOCOL"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_PROTOCOL", "http"), ("ETCD3_CACERT", &ca)], "ETCD3_PROTOCOL"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_CACERT", missing)], "ETCD3_CACERT"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_CACERT", &junk)], "ETCD3_CACERT"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_CERT", &cert)], "ETCD3_KEY"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_KEY", &key)], "ETCD3_KEY"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_CERT", &junk), ("ETCD3_KEY", &key)], "ETCD3_CERT"),
        (vec![("ETCD3_HOSTS", "a:1"), ("ETCD3_USERNAME", "u")], "ETCD3_PASSWORD"),
        (vec![("ETCD3_HOSTS", "a:1"), ("PATRONI_ETCD3_HOSTS", "b:1")], "ETCD3_HOSTS"),
        (vec![("ETCD3_CACERT", &ca)], "ETCD3_CACERT"),
        (vec![("ETCD_HOST", "a:2379")], "ETCD_HOST"),
        (vec![("TUSK_SHUTDOWN_TIMEOUT", "soon")], "TUSK_SHUTDOWN_TIMEOUT"),
        (vec![("TUSK_LOG_FORMAT", "xml")], "TUSK_LOG_FORMAT"),
        (vec![("TUSK_LOG_LEVEL", "tusk=[")], "TUSK_LOG_LEVEL"),
        (vec![("TUSK_PG_PARAMETERS", "shared_buffers=1GB")], "TUSK_PG_PARAMETERS"),
        (vec![("TUSK_PG_PARAMETERS", r#"{"port": 5433}"#)], "TUSK_PG_PARAMETERS"),
        (vec![("TUSK_PG_PARAMETERS", r#"{"x; drop": 1}"#)], "TUSK_PG_PARAMETERS"),
        (vec![("TUSK_PG_PARAMETERS", r#"{"work_mem": [1]}"#)], "TUSK_PG_PARAMETERS"),
        (vec![("TUSK_SOCKET_DIR", "run")], "TUSK_SOCKET_DIR"),
        (vec![("TUSK_BOOTSTRAP_DCS", r#"{"ttl":"soon"}"#)], "TUSK_BOOTSTRAP_DCS"),
        (vec![("INITDB_LOCALE", "en_US; rm")], "INITDB_LOCALE"),
        (vec![("TUSK_NOFAILOVER", "sometimes")], "TUSK_NOFAILOVER"),
    ];
    for (pairs, var) in cases {
        match parse(&pairs) {
            Ok(_) => panic!("{pairs:?} should fail on {var}"),
            Err(e) => {
                assert_eq!(e.var, var, "{pairs:?}: {e}");
                assert!(!e.message.is_empty());
                assert!(!e.to_string().contains('\n'), "one line: {e}");
            }
        }
    }
}

#[test]
fn no_storage_by_default() {
    assert!(parse(&[]).unwrap().storage.is_none());
    // Tuning variables alone do not enable archiving.
    assert!(parse(&[("WALG_COMPRESSION_METHOD", "zstd")]).unwrap().storage.is_none());
}

/// (environment, expected URL, bucket, root) for the ways Spilo and WAL-G name the prefix.
#[test]
fn storage_prefixes() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
    let cases: &[Case] = &[
        (&[("WAL_S3_BUCKET", "b"), ("SCOPE", "pg1")], "s3://b/spilo/pg1/wal/15", "b", "spilo/pg1/wal/15/"),
        (
            &[("WAL_S3_BUCKET", "b"), ("SCOPE", "pg1"), ("PGVERSION", "16"), ("WAL_BUCKET_SCOPE_SUFFIX", "/x")],
            "s3://b/spilo/pg1/x/wal/16",
            "b",
            "spilo/pg1/x/wal/16/",
        ),
        (
            &[("WAL_S3_BUCKET", "b"), ("SCOPE", "pg1"), ("NAMESPACE", "team")],
            "s3://b/spilo/team-pg1/wal/15",
            "b",
            "spilo/team-pg1/wal/15/",
        ),
        (
            &[("WAL_S3_BUCKET", "b"), ("SCOPE", "pg1"), ("NAMESPACE", "default")],
            "s3://b/spilo/pg1/wal/15",
            "b",
            "spilo/pg1/wal/15/",
        ),
        (
            &[("WAL_S3_BUCKET", "b"), ("SCOPE", "pg1"), ("NAMESPACE", "team"), ("WAL_BUCKET_SCOPE_PREFIX", "")],
            "s3://b/spilo/team-pg1/wal/15",
            "b",
            "spilo/team-pg1/wal/15/",
        ),
        (
            &[("WAL_S3_BUCKET", "b"), ("WAL_BUCKET_SCOPE_PREFIX", "p-")],
            "s3://b/spilo/p-dummy/wal/15",
            "b",
            "spilo/p-dummy/wal/15/",
        ),
        (&[("WALG_S3_PREFIX", "s3://bk/some/path/")], "s3://bk/some/path/", "bk", "some/path/"),
        (&[("WALE_S3_PREFIX", "s3://bk")], "s3://bk", "bk", ""),
        (&[("WALG_S3_PREFIX", "s3://bk/p"), ("WAL_S3_BUCKET", "other")], "s3://bk/p", "bk", "p/"),
    ];
    for (pairs, url, bucket, root) in cases {
        let s = parse(pairs).unwrap_or_else(|e| panic!("{pairs:?}: {e}")).storage.expect("storage");
        assert_eq!((s.url.as_str(), s.bucket.as_str(), s.root.as_str()), (*url, *bucket, *root), "{pairs:?}");
    }
}

#[test]
fn storage_settings() {
    let p = Pems::new();
    let s = parse(&[("WAL_S3_BUCKET", "b")]).unwrap().storage.unwrap();
    assert_eq!(s.compression, Compression::Lz4);
    assert_eq!((s.upload_concurrency, s.download_concurrency), (16, 10));
    assert!(s.credentials.is_none(), "no static keys: the SDK's default chain");
    assert!(!s.force_path_style && !s.prevent_overwrite);
    assert_eq!((s.endpoint.as_deref(), s.region.as_deref(), s.sse.as_ref()), (None, None, None));

    let s = parse(&[
        ("WALG_S3_PREFIX", "s3://b/x"),
        ("AWS_ENDPOINT", "http://127.0.0.1:3900/"),
        ("AWS_S3_FORCE_PATH_STYLE", "true"),
        ("AWS_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "GKabc"),
        ("AWS_SECRET_ACCESS_KEY_FILE", &p.path("password")),
        ("WALG_COMPRESSION_METHOD", "zstd"),
        ("WALG_UPLOAD_CONCURRENCY", "4"),
        ("WALG_DOWNLOAD_CONCURRENCY", "2"),
        ("WALG_PREVENT_WAL_OVERWRITE", "true"),
        ("WALG_S3_SSE", "aws:kms"),
        ("WALG_S3_SSE_KMS_ID", "k1"),
        ("WALG_S3_CA_CERT_FILE", &p.path("ca.pem")),
    ])
    .unwrap()
    .storage
    .unwrap();
    assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
    assert!(s.force_path_style && s.prevent_overwrite);
    assert_eq!(s.region.as_deref(), Some("garage"));
    let c = s.credentials.as_ref().unwrap();
    assert_eq!((c.access_key_id.as_str(), c.secret_access_key.expose()), ("GKabc", "s3cret"));
    assert_eq!((s.compression, s.upload_concurrency, s.download_concurrency), (Compression::Zstd, 4, 2));
    assert_eq!(s.sse, Some(storage::Sse::Kms { key_id: Some("k1".into()) }));

    for (method, c) in [("brotli", Compression::Brotli), ("none", Compression::None), ("LZ4", Compression::Lz4)] {
        let s = parse(&[("WAL_S3_BUCKET", "b"), ("WALG_COMPRESSION_METHOD", method)]).unwrap().storage.unwrap();
        assert_eq!(s.compression, c, "{method}");
    }
    // WAL-G's lzma and WAL-E's lzo are read, never written: a clear refusal.
    for var in ["WALG_COMPRESSION_METHOD", "WALG_BACKUP_COMPRESSION_METHOD"] {
        for method in ["lzma", "LZO"] {
            let e = parse(&[("WAL_S3_BUCKET", "b"), (var, method)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.message.contains("read-only"), "{var}={method}: {}", e.message);
        }
    }
    let e = parse(&[("WAL_S3_BUCKET", "b"), ("WALG_COMPRESSION_METHOD", "gzip")]).unwrap_err();
    assert!(e.message.contains("is not one of"), "{}", e.message);
    // Spilo's WALE_S3_ENDPOINT form gives the endpoint and the addressing style.
    let s =
        parse(&[("WAL_S3_BUCKET", "b"), ("WALE_S3_ENDPOINT", "https+path://s3.local:9000")]).unwrap().storage.unwrap();
    assert_eq!((s.endpoint.as_deref(), s.force_path_style), (Some("https://s3.local:9000"), true));
    let s =
        parse(&[("WAL_S3_BUCKET", "b"), ("WALE_S3_ENDPOINT", "http+virtualhost://s3.local")]).unwrap().storage.unwrap();
    assert_eq!((s.endpoint.as_deref(), s.force_path_style), (Some("http://s3.local"), false));
}

#[test]
fn storage_secrets_are_redacted() {
    let c = parse(&[
        ("WAL_S3_BUCKET", "b"),
        ("AWS_ACCESS_KEY_ID", "GKvisible"),
        ("AWS_SECRET_ACCESS_KEY", "topsecretvalue"),
        ("AWS_SESSION_TOKEN", "tokenvalue"),
    ])
    .unwrap();
    let json = c.to_redacted_json();
    assert!(!json.contains("topsecretvalue") && !json.contains("tokenvalue"), "{json}");
    assert!(json.contains("GKvisible"), "the key id is not a secret");
}

#[test]
fn bad_storage_values_name_the_variable() {
    let p = Pems::new();
    let junk = p.path("junk.pem");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("WALG_S3_PREFIX", "gs://b/p")], "WALG_S3_PREFIX"),
        (vec![("WALG_S3_PREFIX", "s3://")], "WALG_S3_PREFIX"),
        (vec![("WALE_S3_PREFIX", "s3://b/a//p")], "WALE_S3_PREFIX"),
        (vec![("WALG_S3_PREFIX", "s3://a/p"), ("WALE_S3_PREFIX", "s3://b/p")], "WALG_S3_PREFIX"),
        (vec![("WAL_S3_BUCKET", "bad bucket")], "WAL_S3_BUCKET"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_ENDPOINT", "ftp://x")], "AWS_ENDPOINT"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_ENDPOINT", "http://x/path")], "AWS_ENDPOINT"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALE_S3_ENDPOINT", "https+weird://x")], "WALE_S3_ENDPOINT"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALE_S3_ENDPOINT", "x:9000")], "WALE_S3_ENDPOINT"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_S3_FORCE_PATH_STYLE", "maybe")], "AWS_S3_FORCE_PATH_STYLE"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_REGION", "us east")], "AWS_REGION"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_S3_CA_CERT_FILE", &junk)], "WALG_S3_CA_CERT_FILE"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_S3_CA_CERT_FILE", "rel.pem")], "WALG_S3_CA_CERT_FILE"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_S3_SSE", "rot13")], "WALG_S3_SSE"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_S3_SSE_KMS_ID", "k")], "WALG_S3_SSE_KMS_ID"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_ACCESS_KEY_ID", "k")], "AWS_SECRET_ACCESS_KEY"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_SECRET_ACCESS_KEY", "s")], "AWS_ACCESS_KEY_ID"),
        (vec![("WAL_S3_BUCKET", "b"), ("AWS_SESSION_TOKEN", "t")], "AWS_SESSION_TOKEN"),
        (
            vec![("WAL_S3_BUCKET", "b"), ("AWS_ACCESS_KEY_ID", "k"), ("AWS_ACCESS_KEY_ID_FILE", "/x")],
            "AWS_ACCESS_KEY_ID_FILE",
        ),
        (
            vec![("WAL_S3_BUCKET", "b"), ("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY_FILE", "/nonexistent")],
            "AWS_SECRET_ACCESS_KEY_FILE",
        ),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_COMPRESSION_METHOD", "lzma")], "WALG_COMPRESSION_METHOD"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_UPLOAD_CONCURRENCY", "0")], "WALG_UPLOAD_CONCURRENCY"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_DOWNLOAD_CONCURRENCY", "many")], "WALG_DOWNLOAD_CONCURRENCY"),
        (vec![("WAL_S3_BUCKET", "b"), ("WALG_PREVENT_WAL_OVERWRITE", "perhaps")], "WALG_PREVENT_WAL_OVERWRITE"),
    ];
    for (pairs, var) in cases {
        match parse(&pairs) {
            Ok(_) => panic!("{pairs:?} should fail on {var}"),
            Err(e) => {
                assert_eq!(e.var, var, "{pairs:?}: {e}");
                assert!(!e.to_string().contains('\n'), "one line: {e}");
            }
        }
    }
}

/// Patroni's own variables: the ones for what tusk does are read as aliases
/// of Spilo's; one that would change what was asked for is refused; any
/// other is named in a warning, never silently ignored.
#[test]
fn patroni_variables_are_read_refused_or_named() {
    let c = parse(&[
        ("PATRONI_POSTGRESQL_DATA_DIR", "/data/pg"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "pg1:5433"),
        ("PATRONI_POSTGRESQL_LISTEN", "0.0.0.0:5433"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "pg1:8009"),
        ("PATRONI_RESTAPI_LISTEN", "10.0.0.7:8009"),
        ("PATRONI_LOG_LEVEL", "DEBUG"),
    ])
    .unwrap();
    assert_eq!(c.postgres.data, Path::new("/data/pg"));
    assert_eq!((c.postgres.port, c.api.port), (5433, 8009));
    assert_eq!((c.postgres.connect_address.as_str(), c.api.connect_address.as_str()), ("pg1:5433", "pg1:8009"));
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings.iter().any(|w| w.contains("PATRONI_RESTAPI_LISTEN") && w.contains("only the port")));
    assert!(c.warnings.iter().any(|w| w.contains("PATRONI_LOG_LEVEL is not read")));
    let bad = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().var;
    for var in [
        "PATRONI_RESTAPI_CERTFILE",
        "PATRONI_POSTGRESQL_PGPASS",
        "PATRONI_REWIND_PASSWORD",
        "PATRONI_ETCD_HOSTS",
        "PATRONI_KUBERNETES_NAMESPACE",
        "PATRONI_CONFIGURATION",
        "PATRONI_REPLICATION_SSLROOTCERT",
    ] {
        assert_eq!(bad(&[(var, "x")]), var);
    }
    assert_eq!(bad(&[("PGPORT", "5432"), ("PATRONI_POSTGRESQL_LISTEN", "*:5433")]), "PGPORT");
    assert_eq!(bad(&[("PATRONI_RESTAPI_LISTEN", "nohostport")]), "PATRONI_RESTAPI_LISTEN");
}

#[test]
fn member_tags() {
    assert!(parse(&[]).unwrap().tags.is_empty());
    let c = parse(&[("TUSK_NOFAILOVER", "true"), ("TUSK_NOLOADBALANCE", "false")]).unwrap();
    assert_eq!(serde_json::to_string(&c.tags).unwrap(), r#"{"nofailover":true}"#);
    let c = parse(&[("TUSK_NOFAILOVER", "yes"), ("TUSK_NOLOADBALANCE", "on")]).unwrap();
    assert_eq!(c.tags.len(), 2);
    let c = parse(&[
        ("TUSK_NOSYNC", "true"),
        ("TUSK_CLONEFROM", "1"),
        ("TUSK_FAILOVER_PRIORITY", "3"),
        ("TUSK_REPLICATEFROM", "n2"),
    ])
    .unwrap();
    assert_eq!(c.tags["replicatefrom"], serde_json::json!("n2"));
    assert_eq!(
        serde_json::to_string(&c.tags).unwrap(),
        r#"{"clonefrom":true,"failover_priority":3,"nosync":true,"replicatefrom":"n2"}"#
    );
    assert_eq!(parse(&[("TUSK_FAILOVER_PRIORITY", "high")]).unwrap_err().var, "TUSK_FAILOVER_PRIORITY");
    let c = parse(&[("TUSK_FAILOVER_PRIORITY", "0")]).unwrap();
    assert!(crate::patroni::tagged_nofailover(&c.tags), "priority 0 is nofailover");
}

#[test]
fn spilo_configuration_over_the_environment() {
    let yaml = r#"
bootstrap:
  dcs:
    loop_wait: 3
    postgresql:
      parameters: {max_connections: 200}
      pg_hba: [local all all trust]
  initdb: [{locale: en_US.UTF-8}, {wal-segsize: 32}]
restapi: {listen: "*:8010"}
postgresql:
  parameters: {work_mem: 16MB}
  pg_hba: ["local all all trust", "hostssl all all all md5"]
  callbacks: {on_role_change: "/bin/vip 'a b'", on_stop: null, on_reload: /bin/reload}
  create_replica_methods: [basebackup]
  remove_data_directory_on_rewind_failure: true
tags: {noloadbalance: true, clonefrom: true}
"#;
    let c = parse(&[
        ("SPILO_CONFIGURATION", yaml),
        ("APIPORT", "8008"),
        ("TUSK_BOOTSTRAP_DCS", r#"{"ttl":20,"loop_wait":2,"postgresql":{"parameters":{"work_mem":"4MB"}}}"#),
        ("TUSK_PG_PARAMETERS", r#"{"work_mem":"8MB","log_statement":"ddl"}"#),
        ("CALLBACK_SCRIPT", "/bin/cb --x"),
        ("TUSK_NOFAILOVER", "true"),
        ("WAL_S3_BUCKET", "b"),
    ])
    .unwrap();
    // bootstrap.dcs merged over TUSK_BOOTSTRAP_DCS, the YAML winning.
    let d = &c.bootstrap_dcs;
    assert_eq!((d.ttl, d.loop_wait), (20, 3));
    assert_eq!(d.postgresql.parameters["work_mem"], "4MB");
    assert_eq!(d.postgresql.parameters["max_connections"], 200);
    assert_eq!(d.postgresql.pg_hba(), Some(vec!["local all all trust".to_owned()]));
    assert_eq!(c.postgres.initdb_locale, "en_US.UTF-8");
    assert_eq!(c.postgres.initdb_options, ["--wal-segsize=32"]);
    assert_eq!(c.api.port, 8010);
    assert_eq!(
        (c.postgres.parameters["work_mem"].as_str(), c.postgres.parameters["log_statement"].as_str()),
        ("16MB", "ddl")
    );
    assert_eq!(c.postgres.pg_hba.as_ref().map(Vec::len), Some(2));
    let cb = c.callbacks.as_ref().unwrap();
    assert_eq!(cb.commands["on_start"], ["/bin/cb", "--x"]);
    assert_eq!(cb.commands["on_role_change"], ["/bin/vip", "a b"]);
    assert_eq!(cb.commands["on_reload"], ["/bin/reload"]);
    assert!(!cb.commands.contains_key("on_stop"));
    assert_eq!(c.postgres.replica_methods, [ReplicaMethod::Basebackup]);
    assert_eq!(c.postgres.remove_data_on_rewind_failure, Some(true));
    assert_eq!(serde_json::to_string(&c.tags).unwrap(), r#"{"clonefrom":true,"nofailover":true,"noloadbalance":true}"#);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Defaults: the bucket's backup first when there is a bucket.
    assert_eq!(
        parse(&[("WAL_S3_BUCKET", "b")]).unwrap().postgres.replica_methods,
        [ReplicaMethod::Backup, ReplicaMethod::Basebackup]
    );
    assert_eq!(parse(&[]).unwrap().postgres.replica_methods, [ReplicaMethod::Basebackup]);

    // Errors name the variable, with the path in the message.
    for (yaml, says) in [
        ("postgresql: {parameters: {archive_command: x}}", "postgresql.parameters.archive_command is managed"),
        ("bootstrap: {dcs: {ttl: soon}}", "bootstrap.dcs"),
        ("postgresql: {create_replica_methods: [wal_e]}", "no bucket"),
        ("restapi: {listen: nohostport}", "PATRONI_RESTAPI_LISTEN"),
        ("postgresql: {callbacks: {on_start: \"'unbalanced\"}}", "postgresql.callbacks.on_start"),
    ] {
        let e = parse(&[("SPILO_CONFIGURATION", yaml)]).unwrap_err();
        assert!(e.var == "SPILO_CONFIGURATION" || e.var == "PATRONI_RESTAPI_LISTEN", "{yaml}: {e}");
        assert!(e.to_string().contains(says), "{yaml}: {e}");
    }
    // A password given in the YAML counts as given (open etcd needs both).
    let open = [("ETCD3_HOSTS", "127.0.0.1:2379")];
    assert_eq!(parse(&open).unwrap_err().var, "PGPASSWORD_SUPERUSER");
    let yaml = "postgresql: {authentication: {superuser: {password: a}, replication: {password: b}}}";
    let c = parse(&[open[0], ("SPILO_CONFIGURATION", yaml)]).unwrap();
    assert_eq!(c.credentials.superuser.password.as_ref().map(|p| p.expose().to_owned()).as_deref(), Some("a"));
    // Unsupported keys are named.
    let c = parse(&[("SPILO_CONFIGURATION", "log: {level: DEBUG}\npostgresql: {use_unix_socket: true}")]).unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings.iter().all(|w| w.starts_with("SPILO_CONFIGURATION: ")));
}

/// Patroni's bootstrap user variables, as its docker example sets them
/// (`PATRONI_admin_PASSWORD`, `PATRONI_admin_OPTIONS=createdb,createrole`):
/// read for Spilo's admin role, the one such role tusk creates; any other
/// user, or options tusk does not give the role, refused naming the variable.
#[test]
fn patroni_bootstrap_user_is_the_admin_role() {
    let c = parse(&[("PATRONI_admin_PASSWORD", "admin"), ("PATRONI_admin_OPTIONS", "createdb, createrole")]).unwrap();
    assert_eq!(c.credentials.admin.name, "admin");
    assert_eq!(c.credentials.admin.password.as_ref().map(|p| p.expose()), Some("admin"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = parse(&[
        ("PGUSER_ADMIN", "dba"),
        ("PATRONI_dba_PASSWORD", "pw"),
        ("PATRONI_dba_OPTIONS", "CREATEROLE,login,createdb"),
    ])
    .unwrap();
    assert_eq!((c.credentials.admin.name.as_str(), c.credentials.admin.password.unwrap().expose()), ("dba", "pw"));
    let c = parse(&[("PGPASSWORD_ADMIN", "same"), ("PATRONI_admin_PASSWORD", "same")]).unwrap();
    assert_eq!(c.credentials.admin.password.unwrap().expose(), "same");

    let bad = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err();
    let e = bad(&[("PATRONI_admin_OPTIONS", "createdb")]);
    assert_eq!(e.var, "PATRONI_admin_OPTIONS", "{e}");
    assert!(e.to_string().contains("CREATEDB CREATEROLE"), "{e}");
    assert_eq!(bad(&[("PATRONI_admin_OPTIONS", "createdb,createrole,superuser")]).var, "PATRONI_admin_OPTIONS");
    let e = bad(&[("PATRONI_alice_PASSWORD", "x")]);
    assert_eq!(e.var, "PATRONI_alice_PASSWORD");
    assert!(e.to_string().contains("\"alice\"") && e.to_string().contains("PGUSER_ADMIN"), "{e}");
    assert_eq!(bad(&[("PATRONI_alice_OPTIONS", "createdb")]).var, "PATRONI_alice_OPTIONS");
    // Named admin by PGUSER_ADMIN: Patroni's variables for "admin" are another user.
    assert_eq!(bad(&[("PGUSER_ADMIN", "dba"), ("PATRONI_admin_PASSWORD", "x")]).var, "PATRONI_admin_PASSWORD");
    assert_eq!(bad(&[("PGPASSWORD_ADMIN", "a"), ("PATRONI_admin_PASSWORD", "b")]).var, "PGPASSWORD_ADMIN");
    assert_eq!(bad(&[("PATRONI_REWIND_OPTIONS", "x")]).var, "PATRONI_REWIND_OPTIONS");
}

/// Every `PATRONI_*` variable of deploy/compose/compose.yml (Patroni's
/// docker example, as a user has it) is read: no refusal, no warning.
#[test]
fn compose_example_variables_are_all_read() {
    let compose = include_str!("../../deploy/compose/compose.yml");
    let mut pairs: Vec<(String, String)> = Vec::new();
    for line in compose.lines() {
        let t = line.trim();
        let Some((k, v)) = t.split_once(':') else { continue };
        if !k.starts_with("PATRONI_") {
            continue;
        }
        let v = v.trim().trim_matches('"').to_owned();
        if !pairs.iter().any(|(pk, _)| pk == k) {
            pairs.push((k.to_owned(), v));
        }
    }
    assert!(pairs.len() >= 15, "the example's variables: {pairs:?}");
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let c = parse(&refs).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(c.etcd.is_some());
}
