use std::path::PathBuf;

/// A configuration the daemon refuses to run with. The `Display` form is what the operator
/// sees: file, line, key, value and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: {key} = {value}: {why}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        why: String,
    },
}

impl ConfigError {
    pub(super) fn syntax(path: &std::path::Path, text: &str, err: &toml::de::Error) -> Self {
        let line = err
            .span()
            .map_or(1, |s| super::validate::line_of(text, s.start));
        let mut message = err.message().trim().to_string();
        if message.starts_with("unknown field") {
            message.push_str("; remove it or check its spelling against config/config.toml");
        }
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        }
    }

    /// The line the error points at, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }
}
