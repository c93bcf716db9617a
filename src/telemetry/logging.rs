//! journald when systemd connected our output to the journal, readable stderr otherwise.

use std::os::fd::AsRawFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `RUST_LOG` wins over the configured level so an operator can turn up one run.
pub fn init(level: &str) {
    // kube's watcher logs every failed reconnect at ERROR, and its HTTP client every failed
    // request ("failed with error client error (Connect)", several a second while the API
    // server is unreachable, and without the cause). Our callers report each outage once,
    // when it starts, with the cause (crate::telemetry::explain), and once when it ends:
    // kube's own lines are noise unless asked for by name.
    let mut level = level.to_string();
    for (target, off) in [
        ("kube_runtime", "kube_runtime::watcher=off"),
        ("kube_client", "kube_client::client::builder=off"),
    ] {
        if !level.contains(target) {
            level = format!("{level},{off}");
        }
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info")));
    let journald = if stderr_is_journal() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_field_prefix(None))
    } else {
        None
    };
    let result = match journald {
        Some(j) => tracing_subscriber::registry()
            .with(j.with_filter(filter))
            .try_init(),
        None => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    // A second init (tests, re-exec) keeps the first subscriber.
    let _ = result;
}

/// systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it gave us; only if stderr is
/// still that stream are we talking to the journal (not, say, a redirect to a file).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into the provided buffer; fd 2 is valid for the process lifetime.
    let rc = unsafe { libc::fstat(std::io::stderr().as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstat returned 0, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    st.st_dev == dev && st.st_ino == ino
}
