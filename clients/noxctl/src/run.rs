//! `runpy` and `runsh`: send the job, stream its output as it comes (NDJSON: stdout to
//! stdout, stderr to stderr), and turn its end into noxctl's exit status.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::cli::JobArgs;
use crate::client::{Client, json_body};
use crate::error::CliError;

/// The exit status of a job that timed out (as `timeout(1)` uses).
pub const TIMED_OUT: u8 = 124;

/// noxctl's exit status for a job that ended this way (the `finished` event or the JSON
/// reply): a timeout is 124, a signal n is 128+n, otherwise the job's exit code.
pub fn exit_code(summary: &Value) -> u8 {
    if summary["timed_out"].as_bool() == Some(true)
        || summary["limit_hit"].as_str() == Some("timeout")
    {
        return TIMED_OUT;
    }
    if let Some(signal) = summary["signal"].as_i64() {
        return u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(u8::MAX);
    }
    match summary["returncode"].as_i64() {
        Some(code) if code < 0 => u8::try_from(128 - code.max(-127)).unwrap_or(u8::MAX),
        Some(code) => u8::try_from(code.min(255)).unwrap_or(u8::MAX),
        None => 1,
    }
}

fn read_all(path: &Path, reader: &mut dyn Read) -> Result<String, CliError> {
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(text)
}

fn read_path(path: &Path) -> Result<String, CliError> {
    if path == Path::new("-") {
        return read_all(Path::new("<stdin>"), &mut std::io::stdin().lock());
    }
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The code of `runpy SOURCE`: standard input for `-`, the file if SOURCE names one,
/// otherwise SOURCE itself.
pub fn python_source(source: &str) -> Result<String, CliError> {
    let path = Path::new(source);
    if source == "-" || (!source.contains('\n') && path.is_file()) {
        read_path(path)
    } else {
        Ok(source.to_owned())
    }
}

/// The request body's common fields: `stdin` and `timeout_s`.
pub fn job_fields(job: &JobArgs) -> Result<Map<String, Value>, CliError> {
    let mut fields = Map::new();
    let stdin = match (&job.stdin, &job.stdin_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => Some(read_path(path)?),
        (None, None) => None,
    };
    if let Some(stdin) = stdin {
        fields.insert("stdin".into(), json!(stdin));
    }
    if let Some(timeout) = job.timeout {
        fields.insert("timeout_s".into(), json!(timeout));
    }
    Ok(fields)
}

/// Run the job at `endpoint` (`/run_py`, `/run_sh`) and return noxctl's exit status.
pub fn run(
    client: &Client,
    endpoint: &str,
    body: Map<String, Value>,
    json_output: bool,
) -> Result<u8, CliError> {
    let body = Value::Object(body);
    if json_output {
        let reply = json_body(client.post_json(endpoint, &body, "application/json")?)?;
        print_json(&reply)?;
        return Ok(exit_code(&reply));
    }
    let response = client.post_json(endpoint, &body, "application/x-ndjson")?;
    let reader = BufReader::new(response.into_body().into_reader());
    follow(
        reader,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// Copy the events of a streamed job to `out` and `err`; the exit status at `finished`.
pub fn follow(
    reader: impl BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, CliError> {
    for line in reader.lines() {
        let line = line.map_err(|error| CliError::Reply(format!("reading the stream: {error}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)
            .map_err(|error| CliError::Reply(format!("a streamed line is not JSON: {error}")))?;
        let data = event["data"].as_str().unwrap_or_default();
        match event["type"].as_str() {
            Some("stdout") => write_now(out, data)?,
            Some("stderr") => write_now(err, data)?,
            Some("finished") => return Ok(exit_code(&event)),
            Some("error") => {
                return Err(CliError::Stream {
                    code: event["error"].as_str().unwrap_or("error").to_owned(),
                    message: event["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            _ => {} // `started`, and kinds a newer server may add
        }
    }
    Err(CliError::Reply(
        "the stream ended before the job finished".to_owned(),
    ))
}

fn write_now(stream: &mut dyn Write, data: &str) -> Result<(), CliError> {
    stream
        .write_all(data.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(CliError::Output)
}

/// Pretty JSON on standard output.
pub fn print_json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_conventions() {
        assert_eq!(exit_code(&json!({"returncode": 0, "timed_out": false})), 0);
        assert_eq!(exit_code(&json!({"returncode": 3, "signal": null})), 3);
        assert_eq!(exit_code(&json!({"returncode": -9, "signal": 9})), 137);
        assert_eq!(exit_code(&json!({"returncode": -15})), 143);
        assert_eq!(
            exit_code(
                &json!({"returncode": -9, "signal": 9, "timed_out": true, "limit_hit": "timeout"})
            ),
            124
        );
        assert_eq!(exit_code(&json!({"returncode": 300})), 255);
        assert_eq!(exit_code(&json!({})), 1);
    }

    #[test]
    fn a_stream_is_split_to_stdout_and_stderr_and_ends_at_finished() {
        let stream = concat!(
            "{\"type\":\"started\",\"job_id\":\"j\"}\n",
            "{\"type\":\"stdout\",\"data\":\"a\\n\"}\n",
            "{\"type\":\"stderr\",\"data\":\"oops\\n\"}\n",
            "\n",
            "{\"type\":\"stdout\",\"data\":\"b\"}\n",
            "{\"type\":\"finished\",\"returncode\":2,\"timed_out\":false,\"signal\":null}\n",
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = follow(stream.as_bytes(), &mut out, &mut err).unwrap();
        assert_eq!(code, 2);
        assert_eq!(out, b"a\nb");
        assert_eq!(err, b"oops\n");
    }

    #[test]
    fn a_stream_that_stops_early_or_reports_an_error_is_an_error() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cut = "{\"type\":\"started\",\"job_id\":\"j\"}\n";
        assert!(matches!(
            follow(cut.as_bytes(), &mut out, &mut err),
            Err(CliError::Reply(_))
        ));
        let failed = "{\"type\":\"error\",\"error\":\"bad_gateway\",\"message\":\"gone\"}\n";
        let error = follow(failed.as_bytes(), &mut out, &mut err).unwrap_err();
        assert!(error.to_string().contains("bad_gateway: gone"), "{error}");
    }

    #[test]
    fn runpy_reads_a_file_when_its_argument_names_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.py");
        std::fs::write(&file, "print('from file')\n").unwrap();
        assert_eq!(
            python_source(file.to_str().unwrap()).unwrap(),
            "print('from file')\n"
        );
        assert_eq!(python_source("print(1)").unwrap(), "print(1)");
    }

    #[test]
    fn job_options_become_request_fields() {
        let job = JobArgs {
            stdin: Some("in".into()),
            stdin_file: None,
            timeout: Some(1.5),
        };
        let fields = job_fields(&job).unwrap();
        assert_eq!(
            Value::Object(fields),
            json!({"stdin": "in", "timeout_s": 1.5})
        );
        assert!(job_fields(&JobArgs::default()).unwrap().is_empty());
    }
}
