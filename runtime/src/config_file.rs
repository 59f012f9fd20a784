//! The optional config file (TOML). Its keys are the command-line flags' names
//! (`rest-addr = "0.0.0.0:8081"`, `access-token = ["..."]`), so one vocabulary serves flags,
//! `PUSHCAST_*` environment variables and the file. Precedence: flag, then environment
//! variable, then file, then default.
//!
//! The file is applied by turning its keys into flags placed *before* the real arguments
//! (clap's `args_override_self` lets the later, real ones win), skipping any key whose
//! environment variable is set. Tables (like `[vhosts]`) are not flags: callers read
//! them with [`ConfigFile::section`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A loaded config file.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: Option<PathBuf>,
    table: toml::Table,
}

impl ConfigFile {
    /// Finds `--config PATH` / `--config=PATH` in `args`, else `PUSHCAST_CONFIG`, and loads it.
    /// No config named: an empty file.
    pub fn locate(args: &[OsString]) -> anyhow::Result<ConfigFile> {
        let mut path: Option<PathBuf> = None;
        let mut iter = args.iter().skip(1);
        while let Some(a) = iter.next() {
            let s = a.to_string_lossy();
            if s == "--config" {
                path = iter.next().map(PathBuf::from);
            } else if let Some(p) = s.strip_prefix("--config=") {
                path = Some(PathBuf::from(p));
            }
        }
        if path.is_none() {
            path = std::env::var_os("PUSHCAST_CONFIG").map(PathBuf::from);
        }
        match path {
            Some(p) => ConfigFile::load(&p),
            None => Ok(ConfigFile::default()),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        Ok(ConfigFile {
            path: Some(path.to_path_buf()),
            table,
        })
    }

    /// The program arguments with the file's flag keys put in front of the real ones.
    pub fn merge_into_args(&self, args: Vec<OsString>) -> Vec<OsString> {
        let mut out = Vec::with_capacity(args.len() + self.table.len());
        let mut rest = args.into_iter();
        if let Some(program) = rest.next() {
            out.push(program);
        }
        for (key, value) in &self.table {
            let env = format!("PUSHCAST_{}", key.to_uppercase().replace('-', "_"));
            if std::env::var_os(&env).is_some() {
                continue;
            }
            match value {
                toml::Value::Table(_) => {}
                toml::Value::Array(items) => {
                    for item in items {
                        out.push(format!("--{key}={}", scalar(item)).into());
                    }
                }
                toml::Value::Boolean(b) => {
                    if *b {
                        out.push(format!("--{key}").into());
                    }
                }
                other => out.push(format!("--{key}={}", scalar(other)).into()),
            }
        }
        out.extend(rest);
        out
    }

    /// A table of the file, deserialized (e.g. `vhosts`); `None` when absent.
    pub fn section<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        match self.table.get(name) {
            Some(v) => {
                let t = v
                    .clone()
                    .try_into()
                    .with_context(|| format!("config file: bad [{name}] section"))?;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }
}

/// Parses the process's arguments with the config file applied (see the module docs).
pub fn parse_args<C: clap::Parser>() -> anyhow::Result<(C, ConfigFile)> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let file = ConfigFile::locate(&args)?;
    let cli = C::parse_from(file.merge_into_args(args));
    Ok((cli, file))
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_keys_become_leading_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "rest-addr = \"127.0.0.1:1\"\nno-auth = true\naccess-token = [\"a\", \"b\"]\n[vhosts.default]\napps = [\"app\"]\n",
        )
        .unwrap();
        let f = ConfigFile::load(&path).unwrap();
        let args = f.merge_into_args(vec!["prog".into(), "--grpc-addr=x".into()]);
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args[0], "prog");
        assert!(args.contains(&"--rest-addr=127.0.0.1:1".to_string()));
        assert!(args.contains(&"--no-auth".to_string()));
        assert!(args.contains(&"--access-token=a".to_string()));
        assert_eq!(args.last().unwrap(), "--grpc-addr=x");
        let v: std::collections::BTreeMap<String, toml::Value> =
            f.section("vhosts").unwrap().unwrap();
        assert!(v.contains_key("default"));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = ConfigFile::load(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read config file"));
    }
}
