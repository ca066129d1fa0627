//! Spilo's clone variables (reference: spilo-patroni.md, "Clone"): a new
//! cluster bootstrapped from another one instead of initdb.
//!
//! - `CLONE_METHOD=CLONE_WITH_WALE`: from the source's bucket (every
//!   storage variable with the `CLONE_` prefix: `CLONE_WAL_S3_BUCKET`,
//!   `CLONE_WALG_S3_PREFIX`, `CLONE_AWS_*`, ...; without `CLONE_AWS_*` the
//!   node's own `AWS_*` are used), with point-in-time recovery:
//!   `CLONE_TARGET_TIME` (must carry a time zone), `CLONE_TARGET_TIMELINE`
//!   (default `latest`), `CLONE_TARGET_INCLUSIVE` (default true),
//!   `USE_PAUSE_AT_RECOVERY_TARGET`.
//! - `CLONE_METHOD=CLONE_WITH_BASEBACKUP`: `pg_basebackup` from
//!   `CLONE_HOST`:`CLONE_PORT` (5432) as `CLONE_USER` / `CLONE_PASSWORD`.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use super::parse::parse_bool;
use super::secret::Secret;
use super::storage::StorageConfig;
use super::{ConfigError, validate_name};

/// Spilo's standby cluster variables: this cluster replicates another
/// one, streaming from `STANDBY_HOST` and/or reading `STANDBY_SCOPE`'s
/// archive (every storage variable with the `STANDBY_` prefix). They
/// become `standby_cluster` in the bootstrap DCS configuration.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyConfig {
    pub host: Option<String>,
    pub port: u16,
    pub primary_slot_name: Option<String>,
    /// `STANDBY_SCOPE`: the source cluster's name (archive source).
    pub scope: Option<String>,
    /// The source's archive (`STANDBY_WALG_S3_PREFIX`, ...).
    pub storage: Option<Box<StorageConfig>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloneConfig {
    /// `CLONE_SCOPE`: the source cluster's name.
    pub scope: String,
    pub source: CloneSource,
    pub target: RecoveryTarget,
}

#[derive(Debug, Clone, Serialize)]
pub enum CloneSource {
    /// `CLONE_WITH_WALE`: a base backup and WAL from the source's bucket.
    Storage(Box<StorageConfig>),
    /// `CLONE_WITH_BASEBACKUP`: `pg_basebackup` from a running source.
    Basebackup { host: String, port: u16, user: String, password: Option<Secret> },
}

/// Where recovery of a clone from storage stops.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryTarget {
    /// `CLONE_TARGET_TIME`, normalised for `recovery_target_time`.
    pub time: Option<String>,
    /// The same instant, to pick the backup (the newest finished before it).
    #[serde(skip)]
    pub instant: Option<OffsetDateTime>,
    /// `CLONE_TARGET_TIMELINE`: `latest`, `current` or a number.
    pub timeline: String,
    /// `CLONE_TARGET_INCLUSIVE`.
    pub inclusive: bool,
    /// `USE_PAUSE_AT_RECOVERY_TARGET`: pause there instead of promoting.
    pub pause: bool,
}

/// Variables of the clone section itself (never storage variables).
const OWN: [&str; 9] = [
    "CLONE_METHOD",
    "CLONE_SCOPE",
    "CLONE_TARGET_TIME",
    "CLONE_TARGET_TIMELINE",
    "CLONE_TARGET_INCLUSIVE",
    "CLONE_HOST",
    "CLONE_PORT",
    "CLONE_USER",
    "CLONE_PASSWORD",
];

/// The clone section; `None` without `CLONE_METHOD`. `own`: the node's own
/// storage (a clone must never share its source's archive).
pub(super) fn parse(
    env: &BTreeMap<String, String>,
    own: Option<&StorageConfig>,
    own_version: u32,
) -> Result<Option<CloneConfig>, ConfigError> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let Some(method) = get("CLONE_METHOD") else {
        for k in ["CLONE_SCOPE", "CLONE_TARGET_TIME", "CLONE_HOST"] {
            if get(k).is_some() {
                return Err(ConfigError::new(
                    "CLONE_METHOD",
                    format!("{k} is set but CLONE_METHOD is not (CLONE_WITH_WALE or CLONE_WITH_BASEBACKUP)"),
                ));
            }
        }
        return Ok(None);
    };
    let scope = get("CLONE_SCOPE")
        .ok_or_else(|| ConfigError::new("CLONE_SCOPE", "required with CLONE_METHOD: the source cluster's name"))?
        .to_owned();
    validate_name("CLONE_SCOPE", &scope)?;
    let source = match method {
        "CLONE_WITH_WALE" | "CLONE_WITH_WALG" => {
            CloneSource::Storage(Box::new(storage(env, &scope, own, own_version)?))
        }
        "CLONE_WITH_BASEBACKUP" => {
            let host = get("CLONE_HOST")
                .ok_or_else(|| ConfigError::new("CLONE_HOST", "required with CLONE_METHOD=CLONE_WITH_BASEBACKUP"))?
                .to_owned();
            let port = match get("CLONE_PORT") {
                None => 5432,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| ConfigError::new("CLONE_PORT", format!("{p:?} is not a TCP port")))?,
            };
            let user = get("CLONE_USER").unwrap_or("standby").to_owned();
            let password = get("CLONE_PASSWORD").map(Secret::new);
            if get("CLONE_TARGET_TIME").is_some() {
                return Err(ConfigError::new(
                    "CLONE_TARGET_TIME",
                    "point-in-time recovery needs CLONE_METHOD=CLONE_WITH_WALE (a base backup and the WAL archive)",
                ));
            }
            CloneSource::Basebackup { host, port, user, password }
        }
        other => {
            return Err(ConfigError::new(
                "CLONE_METHOD",
                format!("{other:?}: expected CLONE_WITH_WALE or CLONE_WITH_BASEBACKUP"),
            ));
        }
    };
    let (time, instant) = match get("CLONE_TARGET_TIME") {
        None => (None, None),
        Some(t) => {
            let at = parse_target_time(t).map_err(|m| ConfigError::new("CLONE_TARGET_TIME", m))?;
            (Some(format_target_time(at)), Some(at))
        }
    };
    let timeline = match get("CLONE_TARGET_TIMELINE") {
        None => "latest".to_owned(),
        Some(t) if t == "latest" || t == "current" => t.to_owned(),
        Some(t) => match t.parse::<u32>() {
            Ok(n) if n > 0 => n.to_string(),
            _ => {
                return Err(ConfigError::new(
                    "CLONE_TARGET_TIMELINE",
                    format!("{t:?}: expected latest, current or a timeline number"),
                ));
            }
        },
    };
    let inclusive = parse_bool("CLONE_TARGET_INCLUSIVE", get("CLONE_TARGET_INCLUSIVE"))?.unwrap_or(true);
    let pause = parse_bool("USE_PAUSE_AT_RECOVERY_TARGET", get("USE_PAUSE_AT_RECOVERY_TARGET"))?.unwrap_or(false);
    Ok(Some(CloneConfig { scope, source, target: RecoveryTarget { time, instant, timeline, inclusive, pause } }))
}

/// The standby section; `None` without `STANDBY_HOST` and `STANDBY_SCOPE`.
pub(super) fn parse_standby(
    env: &BTreeMap<String, String>,
    own: Option<&StorageConfig>,
    own_version: u32,
) -> Result<Option<StandbyConfig>, ConfigError> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let host = get("STANDBY_HOST").map(str::to_owned);
    let scope = get("STANDBY_SCOPE").map(str::to_owned);
    if host.is_none() && scope.is_none() {
        for k in ["STANDBY_PORT", "STANDBY_PRIMARY_SLOT_NAME", "STANDBY_WALG_S3_PREFIX", "STANDBY_WAL_S3_BUCKET"] {
            if get(k).is_some() {
                return Err(ConfigError::new(
                    "STANDBY_HOST",
                    format!("{k} is set but neither STANDBY_HOST nor STANDBY_SCOPE"),
                ));
            }
        }
        return Ok(None);
    }
    let port = match get("STANDBY_PORT") {
        None => 5432,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ConfigError::new("STANDBY_PORT", format!("{p:?} is not a TCP port")))?,
    };
    let primary_slot_name = get("STANDBY_PRIMARY_SLOT_NAME").map(str::to_owned);
    if let Some(slot) = &primary_slot_name
        && !slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ConfigError::new("STANDBY_PRIMARY_SLOT_NAME", format!("{slot:?} is not a replication slot name")));
    }
    let storage = match &scope {
        None => None,
        Some(s) => {
            validate_name("STANDBY_SCOPE", s)?;
            let has_storage = env.keys().any(|k| {
                k.strip_prefix("STANDBY_").is_some_and(|k| super::storage::is_storage_var(k) && !k.starts_with("AWS_"))
            });
            match (has_storage, &host) {
                (false, Some(_)) => None,
                _ => Some(Box::new(prefixed_storage("STANDBY_", &[], env, s, own, own_version)?)),
            }
        }
    };
    Ok(Some(StandbyConfig { host, port, primary_slot_name, scope, storage }))
}

/// The source's storage: the `CLONE_`-prefixed storage variables, parsed
/// as the node's own are, for the source's scope. Errors name the
/// `CLONE_` variable.
fn storage(
    env: &BTreeMap<String, String>,
    scope: &str,
    own: Option<&StorageConfig>,
    own_version: u32,
) -> Result<StorageConfig, ConfigError> {
    prefixed_storage("CLONE_", &OWN, env, scope, own, own_version)
}

/// Another cluster's storage from the variables with `prefix`.
fn prefixed_storage(
    prefix: &str,
    skip: &[&str],
    env: &BTreeMap<String, String>,
    scope: &str,
    own: Option<&StorageConfig>,
    own_version: u32,
) -> Result<StorageConfig, ConfigError> {
    let mut map: BTreeMap<String, String> = env
        .iter()
        .filter_map(|(k, v)| {
            let short = k.strip_prefix(prefix)?;
            (!skip.contains(&k.as_str())).then(|| (short.to_owned(), v.clone()))
        })
        .filter(|(k, _)| super::storage::is_storage_var(k))
        .collect();
    // Without credentials of its own, the clone reads with the node's.
    if !map.keys().any(|k| k.starts_with("AWS_")) {
        for (k, v) in env.iter().filter(|(k, _)| k.starts_with("AWS_")) {
            map.insert(k.clone(), v.clone());
        }
    }
    map.insert("SCOPE".into(), scope.to_owned());
    map.entry("PGVERSION".into()).or_insert_with(|| own_version.to_string());
    let rename = |e: ConfigError| ConfigError::new(format!("{prefix}{}", e.var), e.message);
    let storage = super::storage_from_map(&map).map_err(rename)?.ok_or_else(|| {
        ConfigError::new(
            format!("{prefix}WAL_S3_BUCKET"),
            format!("the source's storage is needed: {prefix}WAL_S3_BUCKET or {prefix}WALG_S3_PREFIX"),
        )
    })?;
    if let Some(own) = own
        && own.url == storage.url
    {
        return Err(ConfigError::new(
            format!("{prefix}WALG_S3_PREFIX"),
            format!(
                "the source {} is this cluster's own archive: this cluster must archive elsewhere \
                 (give it its own SCOPE, WAL_S3_BUCKET or WALG_S3_PREFIX)",
                storage.url
            ),
        ));
    }
    Ok(storage)
}

/// `CLONE_TARGET_TIME`: `YYYY-MM-DD[ T]HH:MM[:SS[.frac]]` followed by a
/// time zone (`Z`, `UTC`, `+HH`, `+HHMM`, `+HH:MM`). A time without a zone
/// is refused: PostgreSQL would read it in the server's zone, which is
/// rarely what was meant.
pub fn parse_target_time(s: &str) -> Result<OffsetDateTime, String> {
    use time::macros::format_description;
    let t = s.trim();
    let bad = |why: &str| format!("{s:?} {why}; expected e.g. 2026-12-03 10:15:00+00:00 or 2026-12-03T10:15:00Z");
    let (body, offset_secs) = if let Some(b) = t.strip_suffix('Z').or_else(|| t.strip_suffix(" UTC")) {
        (b.trim_end(), 0i32)
    } else {
        // The zone: the last '+' or a '-' after the time of day.
        let pos = t.rfind(['+', '-']).filter(|&p| p > 10).ok_or_else(|| bad("has no time zone"))?;
        let (b, z) = t.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
            return Err(bad("has no valid time zone"));
        }
        let h: i32 = digits[..2].parse().map_err(|_| bad("has no valid time zone"))?;
        let m: i32 =
            if digits.len() == 4 { digits[2..].parse().map_err(|_| bad("has no valid time zone"))? } else { 0 };
        if h > 15 || m > 59 {
            return Err(bad("has no valid time zone"));
        }
        (b.trim_end(), sign * (h * 3600 + m * 60))
    };
    let body = body.replacen('T', " ", 1);
    let with_frac = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    let with_secs = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let minutes = format_description!("[year]-[month]-[day] [hour]:[minute]");
    let local = time::PrimitiveDateTime::parse(&body, with_frac)
        .or_else(|_| time::PrimitiveDateTime::parse(&body, with_secs))
        .or_else(|_| time::PrimitiveDateTime::parse(&body, minutes))
        .map_err(|_| bad("is not a date and time"))?;
    let offset = time::UtcOffset::from_whole_seconds(offset_secs).map_err(|_| bad("has no valid time zone"))?;
    Ok(local.assume_offset(offset))
}

/// As `recovery_target_time` gets it: UTC, microseconds.
fn format_target_time(at: OffsetDateTime) -> String {
    let u = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        u.year(),
        u8::from(u.month()),
        u.day(),
        u.hour(),
        u.minute(),
        u.second(),
        u.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times() {
        for (input, want) in [
            ("2026-12-03 10:15:00+00", "2026-12-03 10:15:00.000000+00"),
            ("2026-12-03T10:15:00Z", "2026-12-03 10:15:00.000000+00"),
            ("2026-12-03 10:15:00 UTC", "2026-12-03 10:15:00.000000+00"),
            ("2026-12-03 11:15:00.5+01:00", "2026-12-03 10:15:00.500000+00"),
            ("2026-12-03 05:15-0500", "2026-12-03 10:15:00.000000+00"),
            ("2026-12-03T10:15:00.123456+00:00", "2026-12-03 10:15:00.123456+00"),
        ] {
            let at = parse_target_time(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(format_target_time(at), want, "{input}");
        }
        for bad in ["2026-12-03 10:15:00", "2026-12-03", "yesterday", "2026-12-03 10:15:00+99", "2026-13-03 10:15Z"] {
            assert!(parse_target_time(bad).is_err(), "{bad} accepted");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn clone_from_storage() {
        let e = env(&[
            ("CLONE_METHOD", "CLONE_WITH_WALE"),
            ("CLONE_SCOPE", "source"),
            ("CLONE_WALG_S3_PREFIX", "s3://b/src"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ENDPOINT", "http://127.0.0.1:3900"),
            ("CLONE_TARGET_TIME", "2026-12-03 10:15:00+00"),
        ]);
        let c = parse(&e, None, 15).unwrap().unwrap();
        assert_eq!(c.scope, "source");
        let CloneSource::Storage(s) = &c.source else { panic!("storage") };
        assert_eq!(s.url, "s3://b/src");
        assert!(s.credentials.is_some(), "the node's own AWS_* credentials are used");
        assert_eq!(c.target.time.as_deref(), Some("2026-12-03 10:15:00.000000+00"));
        assert_eq!(c.target.timeline, "latest");
        assert!(c.target.inclusive);
    }

    #[test]
    fn clone_errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CLONE_METHOD", "CLONE_WITH_WALE")], "CLONE_SCOPE"),
            (&[("CLONE_METHOD", "CLONE_WITH_WALE"), ("CLONE_SCOPE", "s")], "CLONE_WAL_S3_BUCKET"),
            (&[("CLONE_METHOD", "COPY"), ("CLONE_SCOPE", "s")], "CLONE_METHOD"),
            (&[("CLONE_SCOPE", "s")], "CLONE_METHOD"),
            (
                &[
                    ("CLONE_METHOD", "CLONE_WITH_WALE"),
                    ("CLONE_SCOPE", "s"),
                    ("CLONE_WALG_S3_PREFIX", "s3://b/x"),
                    ("CLONE_TARGET_TIME", "2026-12-03 10:15:00"),
                ],
                "CLONE_TARGET_TIME",
            ),
            (
                &[
                    ("CLONE_METHOD", "CLONE_WITH_WALE"),
                    ("CLONE_SCOPE", "s"),
                    ("CLONE_WALG_S3_PREFIX", "s3://b/x"),
                    ("CLONE_TARGET_TIMELINE", "two"),
                ],
                "CLONE_TARGET_TIMELINE",
            ),
            (&[("CLONE_METHOD", "CLONE_WITH_BASEBACKUP"), ("CLONE_SCOPE", "s")], "CLONE_HOST"),
            (
                &[
                    ("CLONE_METHOD", "CLONE_WITH_BASEBACKUP"),
                    ("CLONE_SCOPE", "s"),
                    ("CLONE_HOST", "h"),
                    ("CLONE_PORT", "x"),
                ],
                "CLONE_PORT",
            ),
        ];
        for (pairs, var) in cases {
            let e = parse(&env(pairs), None, 15).unwrap_err();
            assert_eq!(&e.var, var, "{pairs:?}: {e}");
        }
    }

    #[test]
    fn a_clone_never_shares_its_source_archive() {
        let e = env(&[
            ("CLONE_METHOD", "CLONE_WITH_WALE"),
            ("CLONE_SCOPE", "source"),
            ("CLONE_WALG_S3_PREFIX", "s3://b/same"),
            ("WALG_S3_PREFIX", "s3://b/same"),
        ]);
        let own = crate::config::storage_from_map(&e).unwrap().unwrap();
        let err = parse(&e, Some(&own), 15).unwrap_err();
        assert_eq!(err.var, "CLONE_WALG_S3_PREFIX");
    }
}
