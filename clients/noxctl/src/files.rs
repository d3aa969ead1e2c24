//! `put`, `get`, `ls` and `rm`: the workspace's files.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::client::{Client, encode, file_url, json_body};
use crate::error::CliError;
use crate::progress::{Progress, ProgressReader};
use crate::run::print_json;

/// The remote path of `put LOCAL REMOTE`: a REMOTE ending in `/` gets LOCAL's file name.
pub fn remote_name(local: &Path, remote: &str) -> Option<String> {
    if remote.ends_with('/') || remote.is_empty() {
        let name = local.file_name()?.to_str()?;
        if local == Path::new("-") {
            return None;
        }
        Some(format!("{remote}{name}"))
    } else {
        Some(remote.to_owned())
    }
}

pub fn put(client: &Client, local: &Path, remote: &str, json: bool) -> Result<(), CliError> {
    let remote = remote_name(local, remote).ok_or_else(|| CliError::Settings {
        path: local.to_owned(),
        message: "name the remote file (REMOTE ends in `/`)".to_owned(),
    })?;
    let response = if local == Path::new("-") {
        client.put_reader(&file_url(&remote), std::io::stdin(), None)?
    } else {
        let file = File::open(local).map_err(|source| CliError::Read {
            path: local.to_owned(),
            source,
        })?;
        let length = file.metadata().ok().map(|meta| meta.len());
        let reader = ProgressReader::new(file, Progress::new(&format!("put {remote}"), length));
        client.put_reader(&file_url(&remote), reader, length)?
    };
    let reply = json_body(response)?;
    if json {
        return print_json(&reply);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "saved {} ({} bytes)",
        reply["saved"].as_str().unwrap_or(&remote),
        reply["bytes"]
    )
    .map_err(CliError::Output)
}

pub fn get(client: &Client, remote: &str, local: Option<&Path>) -> Result<(), CliError> {
    let response = client.call("GET", &file_url(remote))?;
    let length = response
        .headers()
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut reader = ProgressReader::new(
        response.into_body().into_reader(),
        Progress::new(&format!("get {remote}"), length),
    );
    match local {
        None => copy(
            &mut reader,
            &mut std::io::stdout().lock(),
            Path::new("<stdout>"),
        ),
        Some(path) if path == Path::new("-") => copy(
            &mut reader,
            &mut std::io::stdout().lock(),
            Path::new("<stdout>"),
        ),
        Some(path) => {
            let path = if path.is_dir() {
                let name = remote.rsplit('/').next().unwrap_or(remote);
                path.join(name)
            } else {
                path.to_path_buf()
            };
            let mut file = File::create(&path).map_err(|source| CliError::Write {
                path: path.clone(),
                source,
            })?;
            copy(&mut reader, &mut file, &path)
        }
    }
}

fn copy(reader: &mut dyn Read, writer: &mut dyn Write, path: &Path) -> Result<(), CliError> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|error| CliError::Reply(format!("the download broke off: {error}")))?;
        if read == 0 {
            break;
        }
        writer
            .write_all(&buffer[..read])
            .map_err(|source| CliError::Write {
                path: PathBuf::from(path),
                source,
            })?;
    }
    writer.flush().map_err(|source| CliError::Write {
        path: PathBuf::from(path),
        source,
    })
}

pub fn ls(client: &Client, prefix: Option<&str>, json: bool) -> Result<(), CliError> {
    let path = match prefix {
        Some(prefix) => format!("/files?prefix={}", encode(prefix, true)),
        None => "/files".to_owned(),
    };
    let reply = json_body(client.call("GET", &path)?)?;
    if json {
        return print_json(&reply);
    }
    let empty = Vec::new();
    let files = reply["files"].as_array().unwrap_or(&empty);
    let mut out = std::io::stdout().lock();
    for entry in files {
        writeln!(out, "{}", listing_line(entry)).map_err(CliError::Output)?;
    }
    if reply["truncated"].as_bool() == Some(true) {
        writeln!(out, "… (listing truncated by the server)").map_err(CliError::Output)?;
    }
    Ok(())
}

/// `file      1234  2026-11-24 02:00  dir/a.txt`
pub fn listing_line(entry: &Value) -> String {
    format!(
        "{:<7} {:>12}  {}  {}",
        entry["type"].as_str().unwrap_or("?"),
        entry["size"].as_u64().unwrap_or(0),
        utc_minutes(entry["modified_ms"].as_u64().unwrap_or(0)),
        entry["path"].as_str().unwrap_or("?")
    )
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM` (UTC).
pub fn utc_minutes(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let minute_of_day = (seconds % 86_400) / 60;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

pub fn rm(client: &Client, remote: &str, json: bool) -> Result<(), CliError> {
    let reply = json_body(client.call("DELETE", &file_url(remote))?)?;
    if json {
        return print_json(&reply);
    }
    writeln!(
        std::io::stdout().lock(),
        "deleted {}",
        reply["deleted"].as_str().unwrap_or(remote)
    )
    .map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_remote_directory_gets_the_local_file_name() {
        let local = Path::new("/tmp/data.csv");
        assert_eq!(remote_name(local, "in/").as_deref(), Some("in/data.csv"));
        assert_eq!(remote_name(local, "").as_deref(), Some("data.csv"));
        assert_eq!(remote_name(local, "x.csv").as_deref(), Some("x.csv"));
        assert_eq!(remote_name(Path::new("-"), "dir/"), None);
    }

    #[test]
    fn dates_are_utc_to_the_minute() {
        assert_eq!(utc_minutes(0), "1970-01-01 00:00");
        assert_eq!(utc_minutes(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(utc_minutes(1_767_225_659_000), "2026-01-01 00:00");
    }

    #[test]
    fn a_listing_line_has_type_size_date_and_path() {
        let entry = json!({"path": "dir/a.txt", "type": "file", "size": 42, "modified_ms": 0});
        assert_eq!(
            listing_line(&entry),
            "file              42  1970-01-01 00:00  dir/a.txt"
        );
    }
}
