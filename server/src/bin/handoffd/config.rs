//! Where handoffd's settings come from. Every flag can also be given by an environment
//! variable (`HANDOFFD_` and the flag's name, upper case with `_` for `-`) or in the TOML
//! file `--config` names (the flag's name as the key); a flag wins over the environment,
//! the environment over the file, the file over the default.
//!
//! The layers become one command line: a setting from the environment or the file is added
//! as its flag when neither a flag nor (for the file) the environment gave it, so clap
//! parses and checks every value the same way whatever its source, and an error names the
//! source it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Prefix of the environment variables that set flags.
pub const ENV_PREFIX: &str = "HANDOFFD_";
/// Variables under [`ENV_PREFIX`] that are test hooks, not settings.
const HOOK_PREFIX: &str = "HANDOFFD_FAULT_";
/// Flags that pick the layers themselves (and clap's own), never settings.
const NOT_SETTINGS: [&str; 4] = ["config", "print_config", "help", "version"];

/// Where a setting's value came from, for `--print-config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

/// The command line parsed with every layer, and where each setting came from.
pub struct Layered {
    pub matches: ArgMatches,
    pub sources: BTreeMap<String, Source>,
}

/// Why the settings could not be taken; either way the process exits 2, as for a bad flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting that could not be used: the message names the setting and its source.
    #[error("{0}")]
    Setting(String),
    /// clap's own: a bad flag, or a request for help or the version (which print and exit
    /// by themselves).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// A setting's environment variable: `HANDOFFD_DURABLE_TIMEOUT` for `--durable-timeout`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.replace('-', "_").to_uppercase())
}

/// Parses `argv` (its first item is the program) with the environment `env` and the file
/// `--config` (or `HANDOFFD_CONFIG`) names. Help and version requests, and bad flags, are
/// clap's errors, which print and exit by themselves.
pub fn parse(
    cmd: &Command,
    argv: Vec<OsString>,
    env: &BTreeMap<String, String>,
) -> Result<Layered, ConfigError> {
    // A first look at the command line alone, to find --config and which flags it gives:
    // nothing is checked yet (a flag may need one the file gives, as --node needs --store);
    // the full parse below checks everything. Help and version are answered here.
    let first = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)?;
    let file = first
        .get_one::<PathBuf>("config")
        .cloned()
        .or_else(|| env.get(&env_name("config")).map(PathBuf::from));
    let table = match &file {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    let settings: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| {
            !NOT_SETTINGS.contains(&a.get_id().as_str())
                && a.get_long().is_some()
                && !a.is_hide_set()
        })
        .collect();
    check_keys(&settings, &table, file.as_deref(), env)?;
    let mut added: Vec<OsString> = Vec::new();
    let mut sources = BTreeMap::new();
    for arg in &settings {
        let id = arg.get_id().as_str();
        let long = arg.get_long().expect("filtered on a long name");
        let source = if first.value_source(id) == Some(ValueSource::CommandLine) {
            Source::Flag
        } else if let Some(v) = env.get(&env_name(long)) {
            let values = v.split(',').map(str::to_owned).collect::<Vec<_>>();
            let words = flag_words(arg, long, &values, v)
                .map_err(|why| ConfigError::Setting(format!("{}: {why}", env_name(long))))?;
            added.extend(words);
            Source::Env(env_name(long))
        } else if let Some(value) = table.get(long) {
            let path = file.clone().expect("a table only comes from a file");
            let words = toml_words(arg, long, value).map_err(|why| {
                ConfigError::Setting(format!("{}: key `{long}`: {why}", path.display()))
            })?;
            added.extend(words);
            Source::File(path)
        } else {
            Source::Default
        };
        sources.insert(id.to_owned(), source);
    }
    let mut full = vec![argv.first().cloned().unwrap_or_else(|| "handoffd".into())];
    full.extend(added);
    full.extend(argv.into_iter().skip(1));
    match cmd.clone().try_get_matches_from(full) {
        Ok(matches) => Ok(Layered { matches, sources }),
        Err(e) => {
            // A bad value from the environment or the file: say where it came from.
            let arg = e
                .get(clap::error::ContextKind::InvalidArg)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let long = arg
                .split([' ', '='])
                .next()
                .unwrap_or_default()
                .trim_start_matches('-');
            let source = settings
                .iter()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| sources.get(a.get_id().as_str()));
            let why = first_line(&e.to_string()).to_owned();
            Err(match source {
                Some(Source::Env(var)) => ConfigError::Setting(format!("{var}: {why}")),
                Some(Source::File(path)) => {
                    ConfigError::Setting(format!("{}: key `{long}`: {why}", path.display()))
                }
                _ => ConfigError::Clap(e),
            })
        }
    }
}

fn first_line(s: &str) -> &str {
    s.trim_start_matches("error: ").lines().next().unwrap_or(s)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Setting(format!("--config {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Setting(format!("{}: {e}", path.display())))
}

/// Every key of the file, and every `HANDOFFD_` variable, must name a setting: a misspelt
/// one would otherwise be ignored while the operator believes it applies.
fn check_keys(
    settings: &[&clap::Arg],
    table: &toml::Table,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let longs: Vec<&str> = settings.iter().filter_map(|a| a.get_long()).collect();
    if let Some(path) = file {
        if let Some(key) = table.keys().find(|k| !longs.contains(&k.as_str())) {
            return Err(ConfigError::Setting(format!(
                "{}: unknown key `{key}`{} (the keys are handoffd's flags without the dashes; \
                 `handoffd --print-config` lists them)",
                path.display(),
                suggestion(key, &longs).map_or(String::new(), |s| format!("; did you mean `{s}`?")),
            )));
        }
    }
    let vars: Vec<String> = longs
        .iter()
        .map(|l| env_name(l))
        .chain([env_name("config")])
        .collect();
    if let Some(var) = env
        .keys()
        .find(|k| k.starts_with(ENV_PREFIX) && !k.starts_with(HOOK_PREFIX) && !vars.contains(k))
    {
        let known: Vec<&str> = vars.iter().map(String::as_str).collect();
        return Err(ConfigError::Setting(format!(
            "unknown environment variable {var}{}",
            suggestion(var, &known).map_or(String::new(), |s| format!("; did you mean {s}?")),
        )));
    }
    Ok(())
}

/// The known name closest to `word`, if it is close enough to be a typo of it.
fn suggestion<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A switch (a flag that takes no value).
fn is_switch(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// The command-line words for a setting given as `values` (`text` as it was written).
/// A list (a flag that may repeat) takes each value as a flag of its own.
fn flag_words(
    arg: &clap::Arg,
    long: &str,
    values: &[String],
    text: &str,
) -> Result<Vec<OsString>, String> {
    if is_switch(arg) {
        return match text {
            "true" | "1" | "yes" => Ok(vec![format!("--{long}").into()]),
            "false" | "0" | "no" | "" => Ok(Vec::new()),
            other => Err(format!("`{other}` is not true or false")),
        };
    }
    let words = if matches!(arg.get_action(), ArgAction::Append) {
        values
            .iter()
            .map(|v| format!("--{long}={v}").into())
            .collect()
    } else {
        vec![format!("--{long}={text}").into()]
    };
    Ok(words)
}

/// The command-line words for a setting as the file gives it.
fn toml_words(arg: &clap::Arg, long: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    fn scalar(v: &toml::Value) -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "a {} cannot be this setting's value",
                other.type_str()
            )),
        }
    }
    match value {
        toml::Value::Boolean(_) if !is_switch(arg) => {
            Err("expects a value, not true or false".into())
        }
        toml::Value::Boolean(b) => flag_words(arg, long, &[], &b.to_string()),
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            let values = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            flag_words(arg, long, &values, "")
        }
        toml::Value::Array(_) => Err("takes one value, not a list".into()),
        other if is_switch(arg) => Err(format!("expects true or false, not {other}")),
        other => {
            let text = scalar(other)?;
            flag_words(arg, long, std::slice::from_ref(&text), &text)
        }
    }
}

/// The effective configuration as a TOML file (it can be used as one), each setting with a
/// comment saying where its value came from; defaults and settings with no value are
/// commented out (a default written out would count as given: `cluster` without `store`
/// is refused).
pub fn print(cmd: &Command, layered: &Layered) -> String {
    let mut out = String::from(
        "# handoffd's effective configuration: flag > HANDOFFD_* environment > --config file > default\n",
    );
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), Some(source)) = (arg.get_long(), layered.sources.get(id)) else {
            continue;
        };
        let values: Vec<String> = layered
            .matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let from = match source {
            Source::Flag => "flag".to_owned(),
            Source::Env(var) => var.clone(),
            Source::File(path) => path.display().to_string(),
            Source::Default => "default".to_owned(),
        };
        let value = if is_switch(arg) {
            Some(values.first().map_or("false".to_owned(), Clone::clone))
        } else if matches!(arg.get_action(), ArgAction::Append) {
            (!values.is_empty()).then(|| {
                let items: Vec<String> = values.iter().map(|v| toml_text(v)).collect();
                format!("[{}]", items.join(", "))
            })
        } else {
            values.first().map(|v| toml_text(v))
        };
        match value {
            Some(v) if *source == Source::Default => {
                let _ = writeln!(out, "# {long} = {v}  (default)");
            }
            Some(v) => {
                let _ = writeln!(out, "{long} = {v}  # {from}");
            }
            None => {
                let _ = writeln!(out, "# {long} = (not set)");
            }
        }
    }
    out
}

/// A value as TOML: a number as itself, anything else as a string.
fn toml_text(v: &str) -> String {
    if v.parse::<i64>().is_ok() {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("t")
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("print_config")
                    .long("print-config")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .default_value("127.0.0.1:1"),
            )
            .arg(
                Arg::new("grace")
                    .long("grace")
                    .default_value("10")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(
                Arg::new("rdma_listen")
                    .long("rdma-listen")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("reset_state")
                    .long("reset-state")
                    .action(ArgAction::SetTrue),
            )
    }

    fn run(args: &[&str], env: &[(&str, &str)], file: &str) -> Result<Layered, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["t".into(), "--config".into(), path.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&cmd(), argv, &env).map_err(|e| e.to_string().replace(path.to_str().unwrap(), "FILE"))
    }

    fn grace(l: &Layered) -> u64 {
        *l.matches.get_one::<u64>("grace").unwrap()
    }

    #[test]
    fn a_flag_wins_over_the_environment_which_wins_over_the_file_which_wins_over_the_default() {
        let file = "grace = 3\nlisten = \"10.0.0.1:5\"\n";
        let l = run(&[], &[], file).unwrap();
        assert_eq!(grace(&l), 3);
        assert!(matches!(l.sources["grace"], Source::File(_)));
        let l = run(&[], &[("HANDOFFD_GRACE", "4")], file).unwrap();
        assert_eq!(grace(&l), 4);
        assert_eq!(l.sources["grace"], Source::Env("HANDOFFD_GRACE".into()));
        let l = run(&["--grace", "5"], &[("HANDOFFD_GRACE", "4")], file).unwrap();
        assert_eq!(grace(&l), 5);
        assert_eq!(l.sources["grace"], Source::Flag);
        let l = run(&[], &[], "").unwrap();
        assert_eq!(grace(&l), 10);
        assert_eq!(l.sources["grace"], Source::Default);
    }

    #[test]
    fn lists_and_switches_come_from_arrays_commas_and_booleans() {
        let l = run(
            &[],
            &[],
            "rdma-listen = [\"a:1\", \"b:2\"]\nreset-state = true",
        )
        .unwrap();
        let got: Vec<&String> = l.matches.get_many("rdma_listen").unwrap().collect();
        assert_eq!(got, ["a:1", "b:2"]);
        assert!(l.matches.get_flag("reset_state"));
        let l = run(&[], &[("HANDOFFD_RDMA_LISTEN", "c:3,d:4")], "").unwrap();
        assert_eq!(
            l.matches.get_many::<String>("rdma_listen").unwrap().count(),
            2
        );
        let l = run(&[], &[], "reset-state = false").unwrap();
        assert!(!l.matches.get_flag("reset_state"));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key_and_where_it_came_from() {
        let e = run(&[], &[], "grace-period = 3").err().unwrap();
        assert!(e.starts_with("FILE: unknown key `grace-period`"), "{e}");
        let e = run(&[], &[], "grase = 3").err().unwrap();
        assert!(e.contains("did you mean `grace`?"), "{e}");
        let e = run(&[], &[], "grace = \"soon\"").err().unwrap();
        assert!(
            e.starts_with("FILE: key `grace`: invalid value 'soon'"),
            "{e}"
        );
        let e = run(&[], &[("HANDOFFD_GRACE", "-1")], "").err().unwrap();
        assert!(e.starts_with("HANDOFFD_GRACE: invalid value '-1'"), "{e}");
        let e = run(&[], &[("HANDOFFD_GRAC", "1")], "").err().unwrap();
        assert!(
            e.contains("unknown environment variable HANDOFFD_GRAC; did you mean HANDOFFD_GRACE?"),
            "{e}"
        );
        let e = run(&[], &[], "grace = [1, 2]").err().unwrap();
        assert!(
            e.contains("key `grace`: takes one value, not a list"),
            "{e}"
        );
        let e = run(&[], &[], "reset-state = 1").err().unwrap();
        assert!(
            e.contains("key `reset-state`: expects true or false"),
            "{e}"
        );
        let e = run(&[], &[], "grace = ").err().unwrap();
        assert!(e.starts_with("FILE: TOML parse error"), "{e}");
        // Test hooks are not settings, and are left alone.
        assert!(run(&[], &[("HANDOFFD_FAULT_X", "1")], "").is_ok());
    }

    #[test]
    fn the_printed_configuration_is_a_file_that_gives_the_same_settings() {
        let l = run(&["--grace", "7"], &[], "rdma-listen = [\"a:1\"]").unwrap();
        let printed = print(&cmd(), &l);
        assert!(printed.contains("grace = 7  # flag"), "{printed}");
        assert!(
            printed.contains("# listen = \"127.0.0.1:1\"  (default)"),
            "{printed}"
        );
        assert!(printed.contains("rdma-listen = [\"a:1\"]  # "), "{printed}");
        assert!(!printed.contains("config ="), "{printed}");
        let again = run(&[], &[], &printed).unwrap();
        assert_eq!(grace(&again), 7);
    }
}
