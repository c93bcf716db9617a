//! The one place that turns a rejected value into a [`ConfigError`] naming the file, the
//! line, the key and the value as written. Every section validates through it.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::ConfigError;

/// Byte range of a value in the file, as `toml` reports it.
pub(super) type Span = std::ops::Range<usize>;

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Validator<'_> {
    /// A rejection of `value` (already formatted as the operator wrote it) at `span`.
    pub(super) fn invalid(
        &self,
        key: &str,
        span: &Span,
        value: impl ToString,
        why: impl ToString,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key: key.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    /// Takes `value` out of its span and runs `check` on it; a rejection (`Err(why)`) names
    /// `key`, the value as written (`Debug`: strings quoted, numbers bare) and its line.
    pub(super) fn check<T: Debug, U>(
        &self,
        key: &str,
        value: Spanned<T>,
        check: impl FnOnce(T) -> Result<U, String>,
    ) -> Result<U, ConfigError> {
        let span = value.span();
        let shown = format!("{:?}", value.get_ref());
        check(value.into_inner()).map_err(|why| self.invalid(key, &span, shown, why))
    }

    /// A string that must not be empty; `why` tells what to put there.
    pub(super) fn non_empty(
        &self,
        key: &str,
        value: Spanned<String>,
        why: &str,
    ) -> Result<String, ConfigError> {
        self.check(key, value, |v| {
            if v.trim().is_empty() {
                Err(format!("cannot be empty: {why}"))
            } else {
                Ok(v)
            }
        })
    }

    /// A humantime duration (`"30s"`, `"1m"`, `"500ms"`) of at least `min`.
    pub(super) fn duration(
        &self,
        key: &str,
        value: Spanned<String>,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        self.check(key, value, |text| {
            let d = humantime::parse_duration(&text).map_err(|e| {
                format!("not a duration ({e}); write it like \"30s\", \"1m\" or \"500ms\"")
            })?;
            if d < min {
                return Err(format!(
                    "must be at least {}",
                    humantime::format_duration(min)
                ));
            }
            Ok(d)
        })
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |prefix| prefix.matches('\n').count())
        + 1
}
