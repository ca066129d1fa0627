//! `edit-config` without an editor, as pure functions: patronictl's
//! `--set`/`--pg` paths, the merge of `--apply` (Patroni's `patch_config`:
//! `null` deletes), and the unified diff it shows (Python's
//! `difflib.unified_diff`, three lines of context).

use serde_json::{Map, Value};

/// A value patronictl cannot apply (exit 1, its message).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct EditError(pub String);

/// A YAML value as `yaml.safe_load` reads a `--set` value or an `--apply`
/// file (empty: null).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// patronictl's `apply_config_changes`: each `KEY.PATH=VALUE` sets (or, with
/// an empty or null value, removes) the key at the dotted path; below
/// `postgresql.parameters` the rest of the path is one name (GUCs contain
/// dots). Emptied sections are removed.
pub fn apply_config_changes(data: &Value, pairs: &[String]) -> Result<Value, EditError> {
    let mut changed = data.clone();
    for pair in pairs {
        let Some((path, value)) = pair.split_once('=').filter(|_| !pair.is_empty()) else {
            return Err(EditError(format!("Invalid parameter setting {pair}")));
        };
        let value = parse_yaml(value).map_err(|e| EditError(format!("Invalid value in {pair}: {e}")))?;
        let path: Vec<&str> = path.trim().split('.').collect();
        if !changed.is_object() {
            changed = Value::Object(Map::new());
        }
        if let Value::Object(map) = &mut changed {
            set_path(map, &path, value, &[]);
        }
    }
    Ok(changed)
}

fn set_path(config: &mut Map<String, Value>, path: &[&str], value: Value, prefix: &[&str]) {
    let joined;
    let path: &[&str] = if prefix == ["postgresql", "parameters"] {
        joined = [path.join(".")];
        &[joined[0].as_str()]
    } else {
        path
    };
    let Some((key, rest)) = path.split_first() else { return };
    let key = (*key).to_owned();
    if rest.is_empty() {
        if value.is_null() {
            config.remove(&key);
        } else {
            config.insert(key, value);
        }
        return;
    }
    if !config.get(&key).is_some_and(Value::is_object) {
        config.insert(key.clone(), Value::Object(Map::new()));
    }
    let mut sub_prefix: Vec<&str> = prefix.to_vec();
    sub_prefix.push(&key);
    if let Some(Value::Object(sub)) = config.get_mut(&key) {
        set_path(sub, rest, value, &sub_prefix);
        if sub.is_empty() {
            config.remove(&key);
        }
    }
}

/// Patroni's `patch_config`: merges `data` into `config`; a `null` value
/// removes the key, objects merge recursively, anything else replaces.
pub fn patch_config(config: &mut Map<String, Value>, data: &Map<String, Value>) {
    for (name, value) in data {
        match value {
            Value::Null => {
                config.remove(name);
            }
            Value::Object(v) => match config.get_mut(name) {
                Some(Value::Object(c)) => patch_config(c, v),
                _ => {
                    config.insert(name.clone(), value.clone());
                }
            },
            _ => {
                config.insert(name.clone(), value.clone());
            }
        }
    }
}

/// `--apply FILE` / `--replace FILE`: the file's YAML merged into `base`.
pub fn apply_yaml(base: &Value, text: &str, source: &str) -> Result<Value, EditError> {
    let new = parse_yaml(text).map_err(|e| EditError(format!("{source}: not YAML: {e}")))?;
    let Value::Object(new) = new else {
        return Err(EditError(format!("{source}: expected a mapping of configuration keys")));
    };
    let mut changed = match base {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    patch_config(&mut changed, &new);
    Ok(Value::Object(changed))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Equal,
    Replace,
    Delete,
    Insert,
}

/// `(op, i1, i2, j1, j2)` runs turning `a` into `b`, from a longest common
/// subsequence of lines.
fn opcodes(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize, usize, usize)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut codes = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (mut si, mut sj) = (0, 0);
    let flush = |codes: &mut Vec<_>, si: usize, sj: usize, i: usize, j: usize| {
        let op = match (i > si, j > sj) {
            (true, true) => Op::Replace,
            (true, false) => Op::Delete,
            (false, true) => Op::Insert,
            (false, false) => return,
        };
        codes.push((op, si, i, sj, j));
    };
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            flush(&mut codes, si, sj, i, j);
            let (ei, ej) = (i, j);
            while i < n && j < m && a[i] == b[j] {
                i += 1;
                j += 1;
            }
            codes.push((Op::Equal, ei, i, ej, j));
            si = i;
            sj = j;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            j += 1;
        } else {
            i += 1;
        }
    }
    flush(&mut codes, si, sj, i, j);
    codes
}

/// difflib's `_format_range_unified`.
fn range(start: usize, stop: usize) -> String {
    let length = stop - start;
    match length {
        1 => format!("{}", start + 1),
        0 => format!("{start},0"),
        _ => format!("{},{length}", start + 1),
    }
}

/// `difflib.unified_diff(before, after)` as patronictl prints it to a
/// non-terminal (`--- `, `+++ `, hunks with three lines of context).
pub fn unified_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.trim_end_matches('\n').split('\n').collect();
    let b: Vec<&str> = after.trim_end_matches('\n').split('\n').collect();
    let n = 3;
    let mut codes = opcodes(&a, &b);
    if codes.is_empty() {
        codes.push((Op::Equal, 0, 1, 0, 1));
    }
    if let Some(first) = codes.first_mut()
        && first.0 == Op::Equal
    {
        first.1 = first.1.max(first.2.saturating_sub(n));
        first.3 = first.3.max(first.4.saturating_sub(n));
    }
    if let Some(last) = codes.last_mut()
        && last.0 == Op::Equal
    {
        last.2 = last.2.min(last.1 + n);
        last.4 = last.4.min(last.3 + n);
    }
    let mut groups = Vec::new();
    let mut group = Vec::new();
    for (op, mut i1, i2, mut j1, j2) in codes {
        if op == Op::Equal && i2 - i1 > 2 * n {
            group.push((op, i1, i2.min(i1 + n), j1, j2.min(j1 + n)));
            groups.push(std::mem::take(&mut group));
            i1 = i1.max(i2.saturating_sub(n));
            j1 = j1.max(j2.saturating_sub(n));
        }
        group.push((op, i1, i2, j1, j2));
    }
    if !(group.is_empty() || group.len() == 1 && group[0].0 == Op::Equal) {
        groups.push(group);
    }
    let mut out = String::new();
    for (k, g) in groups.iter().enumerate() {
        if k == 0 {
            out.push_str("--- \n+++ \n");
        }
        let (first, last) = (g[0], g[g.len() - 1]);
        out.push_str(&format!("@@ -{} +{} @@\n", range(first.1, last.2), range(first.3, last.4)));
        for &(op, i1, i2, j1, j2) in g {
            if op == Op::Equal {
                for l in &a[i1..i2] {
                    out.push_str(&format!(" {l}\n"));
                }
                continue;
            }
            if matches!(op, Op::Replace | Op::Delete) {
                for l in &a[i1..i2] {
                    out.push_str(&format!("-{l}\n"));
                }
            }
            if matches!(op, Op::Replace | Op::Insert) {
                for l in &b[j1..j2] {
                    out.push_str(&format!("+{l}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn set_paths_as_patronictl() {
        let data = json!({"loop_wait": 10, "postgresql": {"parameters": {"work_mem": "4MB"}, "use_slots": true}});
        let out = apply_config_changes(
            &data,
            &pairs(&[
                "loop_wait=3",
                "postgresql.parameters.auto_explain.log_min_duration=200ms",
                "postgresql.parameters.work_mem=",
                "synchronous_mode=true",
                "a.b.c=x y",
                "postgresql.use_slots=null",
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "loop_wait": 3,
                "postgresql": {"parameters": {"auto_explain.log_min_duration": "200ms"}},
                "synchronous_mode": true,
                "a": {"b": {"c": "x y"}},
            })
        );
        // Removing the last parameter removes the emptied sections.
        let out = apply_config_changes(
            &json!({"postgresql": {"parameters": {"a": 1}}}),
            &pairs(&["postgresql.parameters.a="]),
        )
        .unwrap();
        assert_eq!(out, json!({}));
        assert_eq!(
            apply_config_changes(&data, &pairs(&["loop_wait"])),
            Err(EditError("Invalid parameter setting loop_wait".into()))
        );
        assert_eq!(apply_config_changes(&data, &pairs(&[""])), Err(EditError("Invalid parameter setting ".into())));
    }

    #[test]
    fn apply_merges_and_null_deletes() {
        let base = json!({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}, "pause": true});
        let out = apply_yaml(&base, "ttl: 20\npostgresql:\n  parameters:\n    a: null\n    c: 3\npause: null\n", "f")
            .unwrap();
        assert_eq!(out, json!({"ttl": 20, "postgresql": {"parameters": {"b": 2, "c": 3}}}));
        assert_eq!(
            apply_yaml(&json!({}), "- a\n", "f"),
            Err(EditError("f: expected a mapping of configuration keys".into()))
        );
        assert!(apply_yaml(&json!({}), "a: [", "f").is_err());
    }

    #[test]
    fn diff_is_difflibs() {
        // Expected texts from Python's difflib.unified_diff, as patronictl prints them.
        let before = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\nj: 10\n";
        let after = "a: 1\nb: 3\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\nj: 10\nk: 11\n";
        assert_eq!(
            unified_diff(before, after),
            "--- \n+++ \n@@ -1,5 +1,5 @@\n a: 1\n-b: 2\n+b: 3\n c: 3\n d: 4\n e: 5\n@@ -8,3 +8,4 @@\n h: 8\n i: 9\n j: 10\n+k: 11\n"
        );
        assert_eq!(
            unified_diff("loop_wait: 10\nttl: 30\n", "loop_wait: 3\nttl: 30\n"),
            "--- \n+++ \n@@ -1,2 +1,2 @@\n-loop_wait: 10\n+loop_wait: 3\n ttl: 30\n"
        );
        assert_eq!(unified_diff("a: 1\n", "a: 1\n"), "");
        assert_eq!(unified_diff("a: 1\n", "a: 1\nb: 2\n"), "--- \n+++ \n@@ -1 +1,2 @@\n a: 1\n+b: 2\n");
        assert_eq!(unified_diff("a: 1\nb: 2\n", "b: 2\n"), "--- \n+++ \n@@ -1,2 +1 @@\n-a: 1\n b: 2\n");
    }
}
