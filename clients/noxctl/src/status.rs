//! `health` (the JSON of `/health`) and `status` (the same, as tables).

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;

use crate::client::{Client, api_error};
use crate::error::CliError;
use crate::run::print_json;

/// Exit status 0 when the service is ready, 1 otherwise.
pub fn health(client: &Client) -> Result<u8, CliError> {
    let (_, body) = client.get_json_any_status("/health")?;
    print_json(&body)?;
    Ok(u8::from(body["status"] != "ok"))
}

pub fn status(client: &Client, json: bool) -> Result<u8, CliError> {
    let (code, body) = client.get_json_any_status("/health")?;
    if json {
        print_json(&body)?;
        return Ok(u8::from(body["status"] != "ok"));
    }
    if code != 200 {
        return Err(api_error(code, &body.to_string()));
    }
    std::io::stdout()
        .lock()
        .write_all(render(&body).as_bytes())
        .map_err(CliError::Output)?;
    Ok(u8::from(body["status"] != "ok"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn yes(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// `1h 02m`, `3m 05s`, `12s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m {sec:02}s"),
        (hours, min, _) => format!("{hours}h {min:02}m"),
    }
}

/// The tables of `noxctl status`.
pub fn render(health: &Value) -> String {
    let executor = &health["executor"];
    let limits = &executor["limits"];
    let mib = |value: &Value| {
        value
            .as_u64()
            .map_or("-".to_owned(), |b| format!("{} MiB", b / (1024 * 1024)))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "nox {}: {}",
        text(&health["version"]),
        text(&health["status"])
    );
    let rows = [
        (
            "executor",
            format!(
                "{}, up {}, ready: {}",
                text(&executor["software"]),
                duration(executor["uptime_ms"].as_u64().unwrap_or(0)),
                yes(&executor["ready"])
            ),
        ),
        (
            "jobs",
            format!(
                "{} running (max {}), {} queued (max {})",
                text(&executor["jobs_running"]),
                text(&executor["max_concurrent_jobs"]),
                text(&executor["jobs_queued"]),
                text(&executor["max_queued_jobs"])
            ),
        ),
        (
            "limits",
            format!(
                "timeout {} s, cpu {} s, memory {}, processes {}, file {}, open files {}, output {} KiB",
                limits["timeout_ms"]
                    .as_u64()
                    .map_or("-".to_owned(), |ms| format!("{}", ms as f64 / 1000.0)),
                text(&limits["cpu_seconds"]),
                mib(&limits["memory_bytes"]),
                text(&limits["max_processes"]),
                mib(&limits["max_file_bytes"]),
                text(&limits["max_open_files"]),
                limits["max_output_bytes"]
                    .as_u64()
                    .map_or("-".to_owned(), |b| (b / 1024).to_string()),
            ),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<9} {value}");
    }
    let _ = writeln!(out);
    let mut table = vec![[
        "LAYER".to_owned(),
        "ACTIVE".to_owned(),
        "REQUIRED".to_owned(),
        "DETAIL".to_owned(),
    ]];
    if let Some(layers) = executor["layers"].as_object() {
        for (name, layer) in layers {
            table.push([
                name.clone(),
                yes(&layer["active"]).to_owned(),
                yes(&layer["required"]).to_owned(),
                text(&layer["detail"]),
            ]);
        }
    }
    out.push_str(&columns(&table));
    out
}

/// Rows as left-aligned columns, two spaces apart; the last column is not padded.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[index]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn layers_are_a_table_with_aligned_columns() {
        let health = json!({
            "status": "ok", "version": "0.1.0",
            "executor": {"software": "nox-executor 0.1.0", "uptime_ms": 3_723_000, "ready": true,
                "jobs_running": 1, "jobs_queued": 0, "max_concurrent_jobs": 4, "max_queued_jobs": 64,
                "limits": {"timeout_ms": 30000, "memory_bytes": 1073741824_u64, "max_output_bytes": 1048576},
                "layers": {
                    "landlock": {"active": true, "required": true, "detail": "ABI 4"},
                    "sandbox_user": {"active": false, "required": false, "detail": "not root"}}}
        });
        let text = render(&health);
        assert!(text.starts_with("nox 0.1.0: ok\n"), "{text}");
        assert!(text.contains("up 1h 02m, ready: yes"), "{text}");
        assert!(text.contains("memory 1024 MiB"), "{text}");
        assert!(
            text.contains("LAYER         ACTIVE  REQUIRED  DETAIL\n"),
            "{text}"
        );
        assert!(
            text.contains("landlock      yes     yes       ABI 4\n"),
            "{text}"
        );
        assert!(
            text.contains("sandbox_user  no      no        not root\n"),
            "{text}"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(12_000), "12s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(3_723_000), "1h 02m");
    }
}
