//! `noxctl`: the command-line client of nox. See `noxctl --help`, `noxctl man`.

#![forbid(unsafe_code)]

mod cli;
mod client;
mod error;
mod files;
mod progress;
mod run;
mod settings;
mod status;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::error::CliError;

/// noxctl's own failure in a run command, told apart from the job's exit codes (as
/// `docker run` does).
const RUN_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_run = matches!(cli.command, Command::Runpy { .. } | Command::Runsh { .. });
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        // `noxctl ... | head`: the reader left; nothing to say.
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(141)
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "noxctl: {}", error.one_line());
            ExitCode::from(if is_run { RUN_FAILED } else { 1 })
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

fn execute(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli::command(), "noxctl", &mut script);
            return write_stdout(&script).map(|()| 0);
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli::command())
                .render(&mut page)
                .map_err(CliError::Output)?;
            return write_stdout(&page).map(|()| 0);
        }
        _ => {}
    }
    let settings = settings::load(cli.url, cli.token)?;
    let client = Client::new(&settings)?;
    match cli.command {
        Command::Health => status::health(&client),
        Command::Status => status::status(&client, cli.json),
        Command::Put { local, remote } => {
            files::put(&client, &local, &remote, cli.json).map(|()| 0)
        }
        Command::Get { remote, local } => {
            files::get(&client, &remote, local.as_deref()).map(|()| 0)
        }
        Command::Ls { prefix } => files::ls(&client, prefix.as_deref(), cli.json).map(|()| 0),
        Command::Rm { remote } => files::rm(&client, &remote, cli.json).map(|()| 0),
        Command::Runpy {
            source,
            filename,
            job,
        } => {
            let mut body = run::job_fields(&job)?;
            body.insert("code".into(), json!(run::python_source(&source)?));
            body.insert("filename".into(), json!(filename));
            run::run(&client, "/run_py", body, cli.json)
        }
        Command::Runsh { command, job } => {
            let mut body = run::job_fields(&job)?;
            body.insert("cmd".into(), json!(command.join(" ")));
            run::run(&client, "/run_sh", body, cli.json)
        }
        Command::Completions { .. } | Command::Man => Ok(0),
    }
}
