//! patronictl's output, as pure functions of the cluster's keys: the
//! members table (`list`, `topology`), the history table, and the four
//! formats of its `print_output` (pretty table in prettytable's layout with
//! the cluster title in the first border, tab-separated, JSON as Python's
//! `json.dumps` prints it, YAML with sorted keys as `yaml.safe_dump`).
//! The rules are Patroni 3.2's `output_members`/`print_output`
//! (`patroni/ctl.py`): a replica's state is its `replication_state` when it
//! publishes one, the lag is `status.optime - xlog_location` rounded to MB
//! half to even, `Pending restart`/`Scheduled restart`/`Tags` appear when a
//! member has one (or with `--extended`), and hosts carry their port when a
//! port is not 5432 or two members share a host.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dcs::ClusterView;
use crate::patroni::MemberValue;

/// `-f/--format`: patronictl's output formats (`topology` is `pretty` with
/// the members ordered and indented by replication tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Tsv,
    Json,
    #[value(alias = "yml")]
    Yaml,
    #[value(skip)]
    Topology,
}

/// One value of a table, as patronictl holds it before printing: Python's
/// `str()` of it goes into the pretty and tab-separated tables, the value
/// itself into JSON and YAML.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    /// A structured value (a member's tags).
    Data(Value),
}

impl Cell {
    fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    /// Python's `str()` of the value (structured values as Python prints a dict).
    fn py_str(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
            Cell::Data(v) => py_str(v),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Cell::Text(s) => Value::String(s.clone()),
            Cell::Int(n) => Value::from(*n),
            Cell::Data(v) => v.clone(),
        }
    }
}

/// Python's `str()` of a JSON value: what prettytable shows for it.
fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", py_repr(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => py_str(other),
    }
}

/// A table as `print_output` receives it: columns, rows, the columns
/// aligned right, and the title (`list`'s ` Cluster: NAME (SYSID) `).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub right: &'static [&'static str],
    pub title: Option<String>,
}

/// patronictl's `print_output`: the table in `fmt`, ending with a newline
/// (as `click.echo` prints it).
pub fn print_output(table: &Table, fmt: Format) -> String {
    let title = table.title.as_deref().filter(|t| !t.is_empty());
    match fmt {
        Format::Json | Format::Yaml => {
            let keep = |c: &Cell| title.is_none() || !c.py_str().is_empty();
            if fmt == Format::Json {
                let rows: Vec<String> = table
                    .rows
                    .iter()
                    .map(|r| {
                        let fields: Vec<String> = table
                            .columns
                            .iter()
                            .zip(r)
                            .filter(|(_, c)| keep(c))
                            .map(|(k, c)| format!("{}: {}", py_json(&Value::String(k.clone())), py_json(&c.to_value())))
                            .collect();
                        format!("{{{}}}", fields.join(", "))
                    })
                    .collect();
                format!("[{}]\n", rows.join(", "))
            } else {
                let rows: Vec<BTreeMap<String, Value>> = table
                    .rows
                    .iter()
                    .map(|r| {
                        table
                            .columns
                            .iter()
                            .zip(r)
                            .filter(|(_, c)| keep(c))
                            .map(|(k, c)| (k.clone(), c.to_value()))
                            .collect()
                    })
                    .collect();
                format!("{}\n", yaml(&rows))
            }
        }
        Format::Pretty | Format::Tsv | Format::Topology => {
            let mut columns = table.columns.clone();
            let mut rows: Vec<Vec<String>> = Vec::with_capacity(table.rows.len());
            let list_cluster = title.is_some() && columns.first().is_some_and(|c| c == "Cluster");
            let tags = columns.iter().position(|c| c == "Tags").filter(|_| list_cluster);
            for r in &table.rows {
                rows.push(
                    r.iter()
                        .enumerate()
                        .map(|(i, c)| match c {
                            // Tags as YAML: a block in the pretty table, flow style otherwise.
                            Cell::Data(v) if Some(i) == tags && fmt == Format::Pretty => yaml(v).trim().to_owned(),
                            Cell::Data(v) if Some(i) == tags => yaml_flow(v),
                            other => other.py_str(),
                        })
                        .collect(),
                );
            }
            if fmt == Format::Tsv {
                let mut out = String::new();
                for r in std::iter::once(&columns).chain(&rows) {
                    out.push_str(&r.join("\t"));
                    out.push('\n');
                }
                return out;
            }
            if list_cluster {
                columns.remove(0);
                for r in &mut rows {
                    if !r.is_empty() {
                        r.remove(0);
                    }
                }
            }
            let right: Vec<bool> = columns.iter().map(|c| table.right.contains(&c.as_str())).collect();
            pretty(&columns, &rows, &right, title)
        }
    }
}

/// prettytable's layout: a frame, padding 1, left-aligned unless `right`,
/// headers aligned as their columns; rules between all rows when a cell
/// has several lines; `title` written over the start of the top border.
fn pretty(columns: &[String], rows: &[Vec<String>], right: &[bool], title: Option<&str>) -> String {
    let width = |s: &str| s.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut widths: Vec<usize> = columns.iter().map(|c| width(c)).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(width(c));
        }
    }
    let rule = format!("+{}+", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let line = |cells: &[String]| {
        let split: Vec<Vec<&str>> = cells.iter().map(|c| c.split('\n').collect()).collect();
        let height = split.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut out = String::new();
        for i in 0..height {
            let parts: Vec<String> = split
                .iter()
                .zip(&widths)
                .zip(right)
                .map(|((lines, w), r)| {
                    let l = lines.get(i).copied().unwrap_or("");
                    if *r { format!(" {l:>w$} ") } else { format!(" {l:<w$} ") }
                })
                .collect();
            out.push_str(&format!("|{}|\n", parts.join("|")));
        }
        out
    };
    let all_rules = rows.iter().any(|r| r.iter().any(|c| c.contains('\n')));
    let top = match title {
        Some(t) => {
            let chars: Vec<char> = rule.chars().collect();
            let t: String = t.chars().take(chars.len().saturating_sub(2)).collect();
            let n = t.chars().count();
            format!("{}{t}{}", chars[0], chars[1 + n..].iter().collect::<String>())
        }
        None => rule.clone(),
    };
    let mut out = format!("{top}\n");
    out.push_str(&line(columns));
    out.push_str(&rule);
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&line(r));
        if all_rules && i + 1 < rows.len() {
            out.push_str(&rule);
            out.push('\n');
        }
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

/// `yaml.safe_dump` (block style, keys sorted): serde_yaml_ng lays values
/// out as PyYAML does; its scalars are YAML 1.2 (PyYAML quotes YAML 1.1's
/// implicit types: `'on'`, `'yes'`, timestamps; both read back the same
/// with a YAML 1.2 parser).
pub fn yaml<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_else(|e| format!("# cannot print as YAML: {e}\n"))
}

/// YAML flow style (`{a: 1, b: x}`), as `safe_dump(default_flow_style=True)`.
fn yaml_flow(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            format!(
                "{{{}}}",
                o.iter()
                    .map(|(k, v)| format!("{}: {}", yaml_scalar(&Value::String(k.clone())), yaml_flow(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Value::Array(a) => format!("[{}]", a.iter().map(yaml_flow).collect::<Vec<_>>().join(", ")),
        scalar => yaml_scalar(scalar),
    }
}

fn yaml_scalar(v: &Value) -> String {
    yaml(v).trim_end_matches('\n').to_owned()
}

/// Python's `json.dumps` with its default separators (`, ` and `: `) and
/// `ensure_ascii`.
pub fn py_json(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                        let mut buf = [0u16; 2];
                        for unit in c.encode_utf16(&mut buf) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(a) => format!("[{}]", a.iter().map(py_json).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_json(&Value::String(k.clone())), py_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What `list` shows besides the keys of the snapshot: the members in
/// synchronous replication (the `sync` key, when `synchronous_mode` is on).
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub sync_standbys: Vec<String>,
    /// Quorum mode: they are shown as `Quorum Standby` (Patroni 4).
    pub quorum: bool,
}

/// patronictl's `output_members`: the members table of cluster `name`
/// (title, rows, columns) and, for the pretty and topology formats, the
/// service lines below it (maintenance mode, a scheduled switchover).
pub fn output_members(name: &str, view: &ClusterView, extra: &Extra, extended: bool, fmt: Format) -> String {
    let table = members_table(name, view, extra, extended, fmt);
    let mut out = print_output(&table, fmt);
    if matches!(fmt, Format::Pretty | Format::Topology) {
        let info = service_info(view);
        if !info.is_empty() {
            out.push(' ');
            out.push_str(&info.join("\n "));
            out.push('\n');
        }
    }
    out
}

/// The leader's role: `Standby Leader` when the configuration makes this a
/// standby cluster (Patroni: `standby_cluster` with a host, port or
/// restore_command).
fn is_standby_cluster(view: &ClusterView) -> bool {
    view.config.standby_cluster.as_ref().is_some_and(|s| {
        s.host.as_deref().is_some_and(|h| !h.is_empty())
            || s.port.as_ref().is_some_and(|p| !p.is_null() && p != &Value::String(String::new()))
            || s.restore_command.as_deref().is_some_and(|r| !r.is_empty())
    })
}

struct Row<'a> {
    name: String,
    leader: bool,
    role: &'static str,
    member: &'a MemberValue,
}

/// The rows of `output_members`, before `print_output`.
pub fn members_table(name: &str, view: &ClusterView, extra: &Extra, extended: bool, fmt: Format) -> Table {
    let initialize = match view.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(s) => s,
    };
    let mut rows: Vec<Row> = view
        .members
        .iter()
        .map(|(n, m)| {
            let leader = view.leader.as_deref() == Some(n.as_str());
            let role = if leader {
                if is_standby_cluster(view) { "Standby Leader" } else { "Leader" }
            } else if extra.sync_standbys.iter().any(|s| s == n) {
                if extra.quorum { "Quorum Standby" } else { "Sync Standby" }
            } else {
                "Replica"
            };
            Row { name: n.clone(), leader, role, member: m }
        })
        .collect();
    if fmt == Format::Topology {
        rows = topology_sort(rows);
    }
    let hosts: Vec<(String, Option<u16>)> =
        view.members.values().filter_map(|m| m.pg_address().and_then(split_host_port)).collect();
    let mut columns: Vec<String> =
        ["Cluster", "Member", "Host", "Role", "State", "TL", "Lag in MB"].map(String::from).to_vec();
    let shown = [
        ("Pending restart", view.members.values().any(|m| m.pending_restart)),
        ("Scheduled restart", view.members.values().any(|m| scheduled_restart(m).is_some())),
        ("Tags", view.members.values().any(|m| !m.tags.is_empty())),
    ];
    for (c, any) in shown {
        if extended || any {
            columns.push(c.into());
        }
    }
    let distinct: std::collections::BTreeSet<&str> = hosts.iter().map(|(h, _)| h.as_str()).collect();
    let append_port = hosts.iter().any(|(_, p)| p.is_some_and(|p| p != 5432)) || distinct.len() < hosts.len();
    let cluster_lsn = view.optime.unwrap_or(0);
    let table_rows = rows
        .iter()
        .map(|r| {
            let m = r.member;
            let host = match m.pg_address().and_then(split_host_port) {
                Some((h, Some(p))) if append_port && !h.is_empty() => format!("{h}:{p}"),
                Some((h, _)) => h,
                None => String::new(),
            };
            // Patroni: a replica's (and a standby leader's) state is its
            // replication_state when it publishes one.
            let state = match (&m.replication_state, r.role == "Leader") {
                (Some(rs), false) if !rs.as_str().is_empty() => rs.to_string(),
                _ => m.state.to_string(),
            };
            let lag = if r.leader {
                Cell::text("")
            } else {
                match m.xlog_location {
                    None => Cell::text("unknown"),
                    Some(lsn) => Cell::Int(mb(cluster_lsn.saturating_sub(lsn))),
                }
            };
            columns
                .iter()
                .map(|c| match c.as_str() {
                    "Cluster" => Cell::text(name),
                    "Member" => Cell::text(r.name.clone()),
                    "Host" => Cell::text(host.clone()),
                    "Role" => Cell::text(r.role),
                    "State" => Cell::text(state.clone()),
                    "TL" => m.timeline.map_or(Cell::text(""), |t| Cell::Int(t.into())),
                    "Lag in MB" => lag.clone(),
                    "Pending restart" => Cell::text(if m.pending_restart { "*" } else { "" }),
                    "Scheduled restart" => Cell::text(scheduled_restart(m).unwrap_or_default()),
                    "Tags" if !m.tags.is_empty() => {
                        Cell::Data(Value::Object(m.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
                    }
                    _ => Cell::text(""),
                })
                .collect()
        })
        .collect();
    Table {
        columns,
        rows: table_rows,
        right: &["Lag in MB", "TL"],
        title: Some(format!(" Cluster: {name} ({initialize}) ")),
    }
}

/// Bytes → MB as Python's `round(lag / 1024 / 1024)`: half to even.
fn mb(bytes: u64) -> i64 {
    (bytes as f64 / 1024.0 / 1024.0).round_ties_even() as i64
}

/// `host:port` → (host, port), `[v6]:port` → (v6, port), the host in
/// lower case (Python's `urlparse(conn_url).hostname`).
fn split_host_port(addr: &str) -> Option<(String, Option<u16>)> {
    if addr.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (rest, None),
        }
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (addr, None),
        }
    };
    Some((host.to_lowercase(), port.and_then(|p| p.parse().ok())))
}

/// `Scheduled restart`: the schedule, ` if version < V` when conditional.
fn scheduled_restart(m: &MemberValue) -> Option<String> {
    let s = m.scheduled_restart.as_ref()?;
    let at = s.get("schedule")?.as_str()?;
    Some(match s.get("postgres_version").and_then(Value::as_str) {
        Some(v) => format!("{at} if version < {v}"),
        None => at.to_owned(),
    })
}

/// patronictl's `topology_sort`: the leader, then each replica under its
/// `replicatefrom` member when that is another replica, else under the
/// leader, indented `+ ` per level.
fn topology_sort(rows: Vec<Row>) -> Vec<Row> {
    let is_leader = |r: &Row| r.role.ends_with("Leader");
    let leader = rows.iter().find(|r| is_leader(r)).map(|r| r.name.clone());
    let replicas: std::collections::BTreeSet<String> =
        rows.iter().filter(|r| !is_leader(r)).map(|r| r.name.clone()).collect();
    let mut children: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if is_leader(r) {
            continue;
        }
        let from = r.member.tags.get("replicatefrom").and_then(Value::as_str);
        let parent = match from {
            Some(p) if p != r.name && replicas.contains(p) => Some(p.to_owned()),
            _ => leader.clone(),
        };
        children.entry(parent).or_default().push(i);
    }
    let mut order: Vec<(usize, usize)> = Vec::new();
    let root = rows.iter().position(is_leader);
    let mut seen = vec![false; rows.len()];
    fn walk(
        rows: &[Row],
        children: &BTreeMap<Option<String>, Vec<usize>>,
        key: Option<String>,
        level: usize,
        seen: &mut Vec<bool>,
        order: &mut Vec<(usize, usize)>,
    ) {
        for &c in children.get(&key).map(Vec::as_slice).unwrap_or(&[]) {
            if seen[c] {
                continue;
            }
            seen[c] = true;
            order.push((c, level));
            walk(rows, children, Some(rows[c].name.clone()), level + 1, seen, order);
        }
    }
    if let Some(r) = root {
        seen[r] = true;
        order.push((r, 0));
    }
    walk(&rows, &children, leader.clone(), 1, &mut seen, &mut order);
    let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(i, level)| {
            let mut r = slots[i].take()?;
            if level > 0 {
                r.name = format!("{}+ {}", " ".repeat((level - 1) * 2), r.name);
            }
            Some(r)
        })
        .collect()
}

/// `Maintenance mode: on`, a scheduled switchover (Python's isoformat of
/// its time, `from`/`to` right-aligned in 24 columns).
fn service_info(view: &ClusterView) -> Vec<String> {
    let mut info = Vec::new();
    if view.config.pause {
        info.push("Maintenance mode: on".to_owned());
    }
    if let Some(f) = &view.failover
        && let Some(at) = &f.scheduled_at
    {
        let at = crate::api::parse_time(at).map(isoformat).unwrap_or_else(|| at.clone());
        let mut s = format!("Switchover scheduled at: {at}");
        for (k, v) in [("from", &f.leader), ("to", &f.member)] {
            if let Some(v) = v {
                s.push_str(&format!("\n{k:>24}: {v}"));
            }
        }
        info.push(s);
    }
    info
}

/// Python's `datetime.isoformat()` of an aware time: `2026-12-04T10:00:00+00:00`
/// (microseconds only when not zero).
pub fn isoformat(t: time::OffsetDateTime) -> String {
    let off = t.offset();
    let (h, m, _) = off.as_hms();
    let sign = if off.is_negative() { '-' } else { '+' };
    let micros = t.microsecond();
    let frac = if micros == 0 { String::new() } else { format!(".{micros:06}") };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{sign}{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        h.unsigned_abs(),
        m.unsigned_abs()
    )
}

/// `history`: the `history` key's lines (`[timeline, lsn, reason,
/// timestamp, new leader]`, shorter lines padded) as patronictl's table.
pub fn history_table(lines: &[Vec<Value>]) -> Table {
    let columns: Vec<String> = ["TL", "LSN", "Reason", "Timestamp", "New Leader"].map(String::from).to_vec();
    let rows = lines
        .iter()
        .map(|l| {
            let mut row: Vec<Cell> = l
                .iter()
                .map(|v| match v {
                    Value::String(s) => Cell::Text(s.clone()),
                    Value::Number(n) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or_default()),
                    other => Cell::Data(other.clone()),
                })
                .collect();
            while row.len() < columns.len() {
                row.push(Cell::text(""));
            }
            row
        })
        .collect();
    Table { columns, rows, right: &["TL", "LSN"], title: None }
}

#[cfg(test)]
mod tests {
    //! Expected texts printed by Patroni's own `print_output` (ctl.py of
    //! Debian's patroni 3.0.2 with prettytable 3.6, the same table code as
    //! 3.2) for the same rows.
    use super::*;
    use crate::patroni::{Failover, ReplicationState, StandbyCluster, State};
    use serde_json::json;

    fn member(addr: &str, state: State, tl: u32, xlog: Option<u64>) -> MemberValue {
        MemberValue {
            conn_url: format!("postgres://{addr}/postgres"),
            api_url: format!("http://{addr}/patroni"),
            state,
            role: crate::patroni::Role::Replica,
            version: "3.0.2".into(),
            xlog_location: xlog,
            timeline: Some(tl),
            tags: BTreeMap::new(),
            replication_state: None,
            receive_lsn: None,
            replay_lsn: None,
            pending_restart: false,
            pause: false,
            scheduled_restart: None,
        }
    }

    /// Leader n1, streaming replica n2 (0 MB behind), node-three in
    /// synchronous replication without a position.
    fn view() -> (ClusterView, Extra) {
        let mut v = ClusterView {
            initialize: Some("7301234567890123456".into()),
            leader: Some("n1".into()),
            optime: Some(100 << 20),
            ..Default::default()
        };
        v.members.insert("n1".into(), member("127.0.0.1:5432", State::Running, 1, Some(100 << 20)));
        let mut n2 = member("127.0.0.1:5433", State::Running, 1, Some((100 << 20) - 1000));
        n2.replication_state = Some(ReplicationState::Streaming);
        v.members.insert("n2".into(), n2);
        let mut n3 = member("10.0.0.13:5432", State::Running, 12, None);
        n3.replication_state = Some(ReplicationState::Streaming);
        v.members.insert("node-three".into(), n3);
        (v, Extra { sync_standbys: vec!["node-three".into()], quorum: false })
    }

    #[test]
    fn list_pretty_is_patronictls_table() {
        let (v, extra) = view();
        let out = output_members("superman", &v, &extra, false, Format::Pretty);
        assert_eq!(
            out,
            "\
+ Cluster: superman (7301234567890123456) ---+-----------+----+-----------+
| Member     | Host           | Role         | State     | TL | Lag in MB |
+------------+----------------+--------------+-----------+----+-----------+
| n1         | 127.0.0.1:5432 | Leader       | running   |  1 |           |
| n2         | 127.0.0.1:5433 | Replica      | streaming |  1 |         0 |
| node-three | 10.0.0.13:5432 | Sync Standby | streaming | 12 |   unknown |
+------------+----------------+--------------+-----------+----+-----------+
"
        );
    }

    #[test]
    fn list_tsv_json_yaml() {
        let (v, extra) = view();
        assert_eq!(
            output_members("superman", &v, &extra, false, Format::Tsv),
            "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\n\
             superman\tn1\t127.0.0.1:5432\tLeader\trunning\t1\t\n\
             superman\tn2\t127.0.0.1:5433\tReplica\tstreaming\t1\t0\n\
             superman\tnode-three\t10.0.0.13:5432\tSync Standby\tstreaming\t12\tunknown\n"
        );
        assert_eq!(
            output_members("superman", &v, &extra, false, Format::Json),
            r#"[{"Cluster": "superman", "Member": "n1", "Host": "127.0.0.1:5432", "Role": "Leader", "State": "running", "TL": 1}, {"Cluster": "superman", "Member": "n2", "Host": "127.0.0.1:5433", "Role": "Replica", "State": "streaming", "TL": 1, "Lag in MB": 0}, {"Cluster": "superman", "Member": "node-three", "Host": "10.0.0.13:5432", "Role": "Sync Standby", "State": "streaming", "TL": 12, "Lag in MB": "unknown"}]
"#
        );
        assert_eq!(
            output_members("superman", &v, &extra, false, Format::Yaml),
            "\
- Cluster: superman
  Host: 127.0.0.1:5432
  Member: n1
  Role: Leader
  State: running
  TL: 1
- Cluster: superman
  Host: 127.0.0.1:5433
  Lag in MB: 0
  Member: n2
  Role: Replica
  State: streaming
  TL: 1
- Cluster: superman
  Host: 10.0.0.13:5432
  Lag in MB: unknown
  Member: node-three
  Role: Sync Standby
  State: streaming
  TL: 12

"
        );
    }

    #[test]
    fn tags_and_pending_restart_columns() {
        let (mut v, extra) = view();
        for n in ["n2", "node-three"] {
            let m = v.members.get_mut(n).unwrap();
            m.pending_restart = true;
            m.tags.insert("nofailover".into(), json!(true));
            m.tags.insert("clonefrom".into(), json!("x y"));
        }
        let name = "a-very-long-cluster-name-that-exceeds-the-width";
        assert_eq!(
            output_members(name, &v, &extra, false, Format::Pretty),
            "\
+ Cluster: a-very-long-cluster-name-that-exceeds-the-width (7301234567890123456) -----------+------------------+
| Member     | Host           | Role         | State     | TL | Lag in MB | Pending restart | Tags             |
+------------+----------------+--------------+-----------+----+-----------+-----------------+------------------+
| n1         | 127.0.0.1:5432 | Leader       | running   |  1 |           |                 |                  |
+------------+----------------+--------------+-----------+----+-----------+-----------------+------------------+
| n2         | 127.0.0.1:5433 | Replica      | streaming |  1 |         0 | *               | clonefrom: x y   |
|            |                |              |           |    |           |                 | nofailover: true |
+------------+----------------+--------------+-----------+----+-----------+-----------------+------------------+
| node-three | 10.0.0.13:5432 | Sync Standby | streaming | 12 |   unknown | *               | clonefrom: x y   |
|            |                |              |           |    |           |                 | nofailover: true |
+------------+----------------+--------------+-----------+----+-----------+-----------------+------------------+
"
        );
        let tsv = output_members("superman", &v, &extra, false, Format::Tsv);
        assert_eq!(
            tsv.lines().nth(2),
            Some("superman\tn2\t127.0.0.1:5433\tReplica\tstreaming\t1\t0\t*\t{clonefrom: x y, nofailover: true}")
        );
        let json = output_members("superman", &v, &extra, false, Format::Json);
        assert!(
            json.contains(
                r#""Lag in MB": 0, "Pending restart": "*", "Tags": {"clonefrom": "x y", "nofailover": true}}"#
            ),
            "{json}"
        );
        let yaml = output_members("superman", &v, &extra, false, Format::Yaml);
        assert!(yaml.contains("  Pending restart: '*'\n  Role: Replica\n  State: streaming\n  TL: 1\n  Tags:\n    clonefrom: x y\n    nofailover: true\n"), "{yaml}");
        // --extended shows the columns even when nobody has a value.
        let (v, extra) = view();
        let ext = output_members("superman", &v, &extra, true, Format::Tsv);
        assert!(
            ext.starts_with(
                "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\tPending restart\tScheduled restart\tTags\n"
            ),
            "{ext}"
        );
    }

    #[test]
    fn roles_states_lag_hosts_and_service_lines() {
        let (mut v, _) = view();
        // Standby cluster: its leader is a Standby Leader; hosts all on 5432
        // and distinct: no port.
        v.config.standby_cluster = Some(StandbyCluster { host: Some("remote".into()), ..Default::default() });
        v.config.pause = true;
        v.failover = Some(Failover {
            leader: Some("n1".into()),
            member: Some("n2".into()),
            scheduled_at: Some("2026-12-04T11:00:00Z".into()),
        });
        v.members.get_mut("n2").unwrap().conn_url = "postgres://10.0.0.12:5432/postgres".into();
        let m = v.members.get_mut("node-three").unwrap();
        m.replication_state = None;
        m.state = State::RewindFailed;
        m.xlog_location = Some((100 << 20) - (5 << 19)); // 2.5 MB behind: rounds to 2
        m.scheduled_restart = Some(json!({"schedule": "2026-12-04T12:00:00+00:00", "postgres_version": "15.3"}));
        v.initialize = Some(String::new());
        let out = output_members("s", &v, &Extra::default(), false, Format::Pretty);
        assert_eq!(
            out,
            "\
+ Cluster: s (initializing) --------------+---------------+----+-----------+---------------------------------------------+
| Member     | Host      | Role           | State         | TL | Lag in MB | Scheduled restart                           |
+------------+-----------+----------------+---------------+----+-----------+---------------------------------------------+
| n1         | 127.0.0.1 | Standby Leader | running       |  1 |           |                                             |
| n2         | 10.0.0.12 | Replica        | streaming     |  1 |         0 |                                             |
| node-three | 10.0.0.13 | Replica        | rewind failed | 12 |         2 | 2026-12-04T12:00:00+00:00 if version < 15.3 |
+------------+-----------+----------------+---------------+----+-----------+---------------------------------------------+
 Maintenance mode: on
 Switchover scheduled at: 2026-12-04T11:00:00+00:00
                    from: n1
                      to: n2
"
        );
        assert_eq!(mb(3 << 19), 2, "1.5 MB rounds to even");
        assert_eq!(mb(5 << 19), 2, "2.5 MB rounds to even");
        assert_eq!(mb((5 << 19) + 1), 3);
        let v = ClusterView::default();
        assert!(
            output_members("s", &v, &Extra::default(), false, Format::Pretty)
                .starts_with("+ Cluster: s (uninitialized) ")
        );
    }

    #[test]
    fn topology_indents_replicas_under_their_upstream() {
        let (mut v, _) = view();
        v.members.get_mut("n2").unwrap().tags.insert("replicatefrom".into(), json!("node-three"));
        v.members.insert("a0".into(), member("10.0.0.14:5432", State::Running, 1, Some(100 << 20)));
        let out = output_members("superman", &v, &Extra::default(), false, Format::Topology);
        let names: Vec<&str> = out
            .lines()
            .skip(3)
            .filter(|l| l.starts_with("| "))
            .map(|l| l.split('|').nth(1).unwrap().trim_end())
            .collect();
        assert_eq!(names, [" n1", " + a0", " + node-three", "   + n2"], "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("|   + n2 ") && l.ends_with("| {replicatefrom: node-three} |")),
            "topology prints tags in flow style: {out}"
        );
    }

    #[test]
    fn history_formats() {
        let lines = vec![
            vec![
                json!(1),
                json!(25165984),
                json!("no recovery target specified"),
                json!("2026-12-04T10:00:00.123456+00:00"),
                json!("n2"),
            ],
            vec![json!(2), json!(50331808), json!("")],
        ];
        let t = history_table(&lines);
        assert_eq!(
            print_output(&t, Format::Pretty),
            "\
+----+----------+------------------------------+----------------------------------+------------+
| TL |      LSN | Reason                       | Timestamp                        | New Leader |
+----+----------+------------------------------+----------------------------------+------------+
|  1 | 25165984 | no recovery target specified | 2026-12-04T10:00:00.123456+00:00 | n2         |
|  2 | 50331808 |                              |                                  |            |
+----+----------+------------------------------+----------------------------------+------------+
"
        );
        assert_eq!(
            print_output(&t, Format::Json),
            r#"[{"TL": 1, "LSN": 25165984, "Reason": "no recovery target specified", "Timestamp": "2026-12-04T10:00:00.123456+00:00", "New Leader": "n2"}, {"TL": 2, "LSN": 50331808, "Reason": "", "Timestamp": "", "New Leader": ""}]
"#
        );
        // PyYAML quotes the timestamp (a YAML 1.1 implicit type);
        // serde_yaml_ng emits YAML 1.2, where it is a plain string.
        assert_eq!(
            print_output(&t, Format::Yaml),
            "\
- LSN: 25165984
  New Leader: n2
  Reason: no recovery target specified
  TL: 1
  Timestamp: 2026-12-04T10:00:00.123456+00:00
- LSN: 50331808
  New Leader: ''
  Reason: ''
  TL: 2
  Timestamp: ''

"
        );
        assert_eq!(
            print_output(&history_table(&[]), Format::Pretty),
            "\
+----+-----+--------+-----------+------------+
| TL | LSN | Reason | Timestamp | New Leader |
+----+-----+--------+-----------+------------+
+----+-----+--------+-----------+------------+
"
        );
        assert_eq!(print_output(&history_table(&[]), Format::Json), "[]\n");
    }

    #[test]
    fn python_json_escapes_like_ensure_ascii() {
        assert_eq!(py_json(&json!({"a": ["é", "\"\n", 1.5, null]})), r#"{"a": ["\u00e9", "\"\n", 1.5, null]}"#);
        assert_eq!(py_json(&json!("🐘")), r#""\ud83d\udc18""#);
        assert_eq!(
            isoformat(crate::api::parse_time("2026-12-04T10:00:00.5-03:30").unwrap()),
            "2026-12-04T10:00:00.500000-03:30"
        );
    }
}
