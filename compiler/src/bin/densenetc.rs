//! `densenetc`: the command line (ARCHITECTURE.md, Command-line contract), as users call it.
//!
//! This front binary does not link LLVM. `run` and `bench` execute an
//! artefact on the runtime alone, so running a model costs what the runtime
//! costs (loading LLVM alone adds ~50 MB of resident memory). Every other
//! command (`compile`, `inspect`, `--help`, …) is handed, arguments
//! unchanged, to `densenetc-compiler` in the same directory, which
//! implements them all.

#[path = "shared/exec.rs"]
mod exec;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// The compiler binary the front hands other commands to.
const COMPILER_BIN: &str = "densenetc-compiler";

#[derive(Parser, Debug)]
#[command(name = "densenetc", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a compiled artefact on an input.
    Run(exec::RunArgs),
    /// Time a compiled artefact.
    Bench(exec::BenchArgs),
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let result = match args.get(1).and_then(|a| a.to_str()) {
        Some("run" | "bench") => match Cli::parse_from(&args).command {
            Command::Run(a) => exec::run(&a).map(|()| ExitCode::SUCCESS),
            Command::Bench(a) => exec::bench(&a).map(|()| ExitCode::SUCCESS),
        },
        _ => hand_to_compiler(&args[1.min(args.len())..]),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", exec::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Where `densenetc-compiler` is: beside this executable.
fn compiler_path() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the densenetc executable")?;
    let dir = me
        .parent()
        .context("the densenetc executable has no parent directory")?;
    let path = dir.join(format!("{COMPILER_BIN}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        anyhow::bail!(
            "{} not found: `densenetc run` and `bench` work on their own, every other command \
             needs {COMPILER_BIN} installed beside densenetc (build both with `cargo build --release -p compiler`)",
            path.display()
        );
    }
    Ok(path)
}

/// Replace this process by the compiler binary with the same arguments (on
/// Unix; elsewhere run it and pass its exit status on).
fn hand_to_compiler(args: &[OsString]) -> Result<ExitCode> {
    let path = compiler_path()?;
    let mut cmd = std::process::Command::new(&path);
    // It reports itself as `densenetc` in help and errors.
    cmd.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.arg0("densenetc").exec();
        Err(err).with_context(|| format!("starting {}", path.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}
