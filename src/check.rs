//! `realtime-edge check`: the configuration and flags files validated as
//! `serve` would, every problem reported in one run.

use std::path::PathBuf;
use std::process::ExitCode;

use realtime_edge::Sidecar;
use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge_tools::cli_output;

/// `check`: the start-up validation `serve` runs (the configuration, the
/// key and certificate files it names, the flags environment, the overrides
/// and flags files), with every problem of all of them reported in one run.
pub fn check(path: Option<&PathBuf>) -> ExitCode {
    let (config, config_error) = match path {
        Some(p) => Config::load_checked(p),
        None => (Some(Config::defaults(&EnvSecrets::from_process())), None),
    };
    let mut problems = config_error.map(|e| e.lines()).unwrap_or_default();
    let Some(config) = config else {
        problems.push(
            "the flags and key files were not checked: the configuration could not be read".into(),
        );
        return report_problems(&problems);
    };
    problems.extend(
        Sidecar::preflight_problems(&config)
            .iter()
            .map(ToString::to_string),
    );
    let mut flags_file_missing = false;
    match Sidecar::flag_store(&config) {
        Err(e) => problems.push(e.to_string()),
        Ok(store) => {
            if let Some(file) = &config.flags.file {
                use realtime_edge::flags::watcher::{FileState, read_flags_file};
                match read_flags_file(file) {
                    FileState::Text(text) => {
                        if let Err(p) = store.schema().parse_yaml_file(&text) {
                            problems
                                .extend(p.into_iter().map(|x| format!("{}: {x}", file.display())));
                        }
                    }
                    // Serving without the file is allowed: defaults apply
                    // (lastError says so) until the file appears.
                    FileState::Missing => flags_file_missing = true,
                    FileState::Unreadable(why) => {
                        problems.push(format!("{}: {why}", file.display()))
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return report_problems(&problems);
    }
    if config.auth.jwt_secret.is_none()
        && config.auth.jwt_public_key_file.is_none()
        && config.auth.jwks_url.is_none()
    {
        eprintln!(
            "warning: {}: auth: no jwt_secret (or JWT_SECRET), jwt_public_key_file or jwks_url; every stream would be refused with 401",
            config.source
        );
    }
    let flags = match &config.flags.file {
        None => "none".to_string(),
        Some(f) if flags_file_missing => format!("{} (missing)", f.display()),
        Some(f) => f.display().to_string(),
    };
    let summary = format!(
        "{}: listen {}, admin {}, upstream {}, {} services, flags file {}",
        config.source,
        config.listen,
        config.admin_listen,
        config.upstream.base_url,
        config.services.len(),
        flags
    );
    if let Some(file) = config.flags.file.as_ref().filter(|_| flags_file_missing) {
        eprintln!(
            "warning: {}: flags.file {}: no such file; serve starts without it: defaults, environment and overrides apply until it appears",
            config.source,
            file.display()
        );
        cli_output::line(&format!("defaults apply: {summary}"));
    } else {
        cli_output::line(&format!("ok: {summary}"));
    }
    ExitCode::SUCCESS
}

/// Prints every problem, one a line, and fails.
fn report_problems(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("{p}");
    }
    ExitCode::FAILURE
}
