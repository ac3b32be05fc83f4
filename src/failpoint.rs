//! Test-only fault injection: named points in the code where a test can make
//! walhook crash, stall or fail at a moment a kill from outside cannot hit
//! reliably (after the store commit but before the LSN ack, after a 2xx but
//! before the delivery is marked, in the middle of a transaction).
//!
//! # Builds
//!
//! The points exist only with the `failpoints` cargo feature. `cargo test`
//! turns it on (the package is its own dev-dependency with the feature, see
//! `Cargo.toml`), so the binary the integration tests spawn has them;
//! `cargo build` and `cargo build --release` do not, and there
//! [`failpoint!`] is the constant `false`: nothing is evaluated, nothing is
//! read from the environment. `walhook --version` says `(failpoints)` in a
//! build that has them.
//!
//! # Configuration
//!
//! `WALHOOK_FAILPOINTS` holds `;`-separated entries `NAME=[SKIP:]ACTION`:
//!
//! ```text
//! WALHOOK_FAILPOINTS="after_store_commit_before_ack=exit"
//! WALHOOK_FAILPOINTS="capture_after_row=5000:pause"          # pass 5,000 hits, then pause
//! WALHOOK_FAILPOINTS="store_append=error(/tmp/x/space-freed)" # fail until that file exists
//! ```
//!
//! - `exit`: end the process at once with [`EXIT_CODE`], without any cleanup
//!   (no destructors, no final acknowledgement, no SQLite close): a crash.
//! - `sleep(MS)`: block the calling thread for MS milliseconds.
//! - `pause` / `pause(PATH)`: block the calling thread forever, or until PATH
//!   exists.
//! - `error` / `error(PATH)`: make the call site fail with its own simulated
//!   error (each point documents which), always or until PATH exists.
//!
//! `SKIP:` lets the first SKIP hits pass. Every action first writes
//! `walhook failpoint NAME: ACTION (hit N)` to stderr, so a test can wait for
//! it in the log. An unknown name or a malformed entry stops walhook with
//! exit code 2: a typo must not silently turn a fault test into a no-op.

/// The environment variable that configures the failpoints.
pub const ENV: &str = "WALHOOK_FAILPOINTS";

/// Whether this build has failpoints (the `failpoints` feature).
pub const COMPILED: bool = cfg!(feature = "failpoints");

/// The exit code of the `exit` action; distinct from every code DESIGN.md assigns.
pub const EXIT_CODE: i32 = 86;

/// Every failpoint, with where it sits. Names outside this list are rejected.
pub const POINTS: &[(&str, &str)] = &[
    (
        "after_store_commit_before_ack",
        "store writer: a group commit holding a transaction's commit is durable, \
         and the new durable LSN is not yet handed to capture for the ack; \
         `error` stops walhook (exit 1) right there",
    ),
    (
        "after_2xx_before_mark",
        "delivery: the endpoint answered 2xx, and the request is not yet marked \
         delivered; `error` forgets the 2xx and sends the request again",
    ),
    (
        "capture_after_row",
        "capture: a change (row, truncate, column change) was decoded and mapped \
         into events, not yet added to its transaction's chunk; `error` breaks \
         the replication stream there (capture reconnects)",
    ),
    (
        "before_store_commit",
        "store: an append holding a transaction's commit has written its rows \
         and not committed (`exit` here loses the uncommitted rows, as a power \
         loss loses unsynced writes); `error` rolls it back with SQLITE_FULL",
    ),
    (
        "store_append",
        "store: an append's rows are written and its commit is next; `error` \
         rolls it back with SQLITE_FULL, as a full disk would",
    ),
    (
        "store_state_write",
        "store: a delivery-state write (cursor advance, failed attempt, dead \
         letter) is next; `error` fails it with SQLITE_FULL, as a full disk would",
    ),
];

/// Evaluates failpoint `$name` (a string literal naming one of [`POINTS`]):
/// exits, sleeps or pauses as configured, and is `true` when the call site
/// should fail with its simulated error. Without the `failpoints` feature it
/// is the constant `false`.
macro_rules! failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let injected = $crate::failpoint::hit($name);
        #[cfg(not(feature = "failpoints"))]
        let injected = false;
        injected
    }};
}
pub(crate) use failpoint;

/// Reads and validates `WALHOOK_FAILPOINTS` now (instead of at the first hit)
/// and returns a description of the active ones, for a startup log line.
/// Without the feature: `Ok(None)`, and the variable is not read.
pub fn init() -> Result<Option<String>, String> {
    #[cfg(feature = "failpoints")]
    {
        let rules = active::rules()?;
        if rules.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = rules.iter().map(ToString::to_string).collect();
        Ok(Some(names.join("; ")))
    }
    #[cfg(not(feature = "failpoints"))]
    Ok(None)
}

#[cfg(feature = "failpoints")]
pub(crate) use active::hit;

#[cfg(feature = "failpoints")]
mod active {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::{ENV, EXIT_CODE, POINTS};

    /// How often `pause(PATH)` looks for its file.
    const PAUSE_POLL: Duration = Duration::from_millis(20);

    /// What a failpoint does once it triggers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Action {
        Exit,
        Panic,
        Sleep(u64),
        Pause(Option<PathBuf>),
        Error(Option<PathBuf>),
    }

    /// One configured failpoint.
    #[derive(Debug)]
    pub(super) struct Rule {
        pub(super) name: String,
        pub(super) skip: u64,
        pub(super) action: Action,
        hits: AtomicU64,
    }

    impl std::fmt::Display for Rule {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}=", self.name)?;
            if self.skip > 0 {
                write!(f, "{}:", self.skip)?;
            }
            match &self.action {
                Action::Exit => write!(f, "exit"),
                Action::Panic => write!(f, "panic"),
                Action::Sleep(ms) => write!(f, "sleep({ms})"),
                Action::Pause(None) => write!(f, "pause"),
                Action::Pause(Some(p)) => write!(f, "pause({})", p.display()),
                Action::Error(None) => write!(f, "error"),
                Action::Error(Some(p)) => write!(f, "error({})", p.display()),
            }
        }
    }

    static RULES: OnceLock<Result<Vec<Rule>, String>> = OnceLock::new();

    pub(super) fn rules() -> Result<&'static [Rule], String> {
        RULES
            .get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
            .as_deref()
            .map_err(Clone::clone)
    }

    /// Parses the whole specification; see the module docs for the grammar.
    pub(super) fn parse(spec: &str) -> Result<Vec<Rule>, String> {
        let mut rules = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| format!("{ENV}: entry {entry:?}: {why}");
            let (name, rest) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected NAME=[SKIP:]ACTION"))?;
            let name = name.trim();
            if !POINTS.iter().any(|(known, _)| *known == name) {
                let known: Vec<&str> = POINTS.iter().map(|(n, _)| *n).collect();
                return Err(bad(&format!(
                    "unknown failpoint; known: {}",
                    known.join(", ")
                )));
            }
            let rest = rest.trim();
            let (skip, action) = match rest.split_once(':') {
                // A colon inside parentheses belongs to the argument.
                Some((skip, action)) if !skip.contains('(') => (
                    skip.trim()
                        .parse::<u64>()
                        .map_err(|_| bad("SKIP must be a whole number"))?,
                    action.trim(),
                ),
                _ => (0, rest),
            };
            let (verb, arg) = match action.split_once('(') {
                Some((verb, arg)) => (
                    verb.trim(),
                    Some(
                        arg.strip_suffix(')')
                            .ok_or_else(|| bad("missing ')'"))?
                            .trim(),
                    ),
                ),
                None => (action, None),
            };
            let path = |arg: Option<&str>| arg.filter(|a| !a.is_empty()).map(PathBuf::from);
            let action = match (verb, arg) {
                ("exit", None) => Action::Exit,
                ("panic", None) => Action::Panic,
                ("sleep", Some(ms)) => Action::Sleep(
                    ms.parse()
                        .map_err(|_| bad("sleep takes milliseconds: sleep(250)"))?,
                ),
                ("pause", arg) => Action::Pause(path(arg)),
                ("error", arg) => Action::Error(path(arg)),
                _ => return Err(bad(
                    "ACTION is exit, panic, sleep(MS), pause, pause(PATH), error or error(PATH)",
                )),
            };
            rules.push(Rule {
                name: name.to_owned(),
                skip,
                action,
                hits: AtomicU64::new(0),
            });
        }
        Ok(rules)
    }

    impl Rule {
        /// Counts a hit and returns its number and the action to take now:
        /// none while skipping, and none for `error(PATH)` once PATH exists.
        fn on_hit(&self) -> Option<(u64, &Action)> {
            let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= self.skip {
                return None;
            }
            if let Action::Error(Some(path)) = &self.action {
                if path.exists() {
                    return None;
                }
            }
            Some((n, &self.action))
        }
    }

    /// Evaluates the failpoint `name`; true when the call site should fail.
    pub(crate) fn hit(name: &'static str) -> bool {
        let rules = match rules() {
            Ok(rules) => rules,
            Err(err) => {
                eprintln!("walhook: {err}");
                std::process::exit(2);
            }
        };
        let Some((n, action)) = rules.iter().find(|r| r.name == name).and_then(Rule::on_hit) else {
            return false;
        };
        eprintln!("walhook failpoint {name}: {} (hit {n})", describe(action));
        match action {
            Action::Exit => {
                // No destructors, no flush of our state: as close to kill -9
                // as a process can do to itself.
                std::process::exit(EXIT_CODE);
            }
            Action::Panic => panic!("failpoint {name}: panic"),
            Action::Sleep(ms) => {
                block(|| std::thread::sleep(Duration::from_millis(*ms)));
                false
            }
            Action::Pause(path) => {
                block(|| {
                    while !path.as_deref().is_some_and(Path::exists) {
                        std::thread::sleep(PAUSE_POLL);
                    }
                });
                false
            }
            Action::Error(_) => true,
        }
    }

    fn describe(action: &Action) -> &'static str {
        match action {
            Action::Exit => "exit",
            Action::Panic => "panic",
            Action::Sleep(_) => "sleep",
            Action::Pause(_) => "pause",
            Action::Error(_) => "error",
        }
    }

    /// Blocks the thread; on a multi-thread runtime the worker's other tasks
    /// move elsewhere first, so only the task at the failpoint stops.
    fn block(f: impl FnOnce()) {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(f);
        } else {
            f();
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn parses_every_action_with_and_without_skip() {
            let rules = parse(
                " after_store_commit_before_ack=exit ; capture_after_row=5000:pause;\
                 store_append=error(/tmp/a:b);after_2xx_before_mark=sleep(250);\
                 store_state_write=error;",
            )
            .unwrap();
            let got: Vec<(&str, u64, Action)> = rules
                .iter()
                .map(|r| (r.name.as_str(), r.skip, r.action.clone()))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("after_store_commit_before_ack", 0, Action::Exit),
                    ("capture_after_row", 5000, Action::Pause(None)),
                    (
                        "store_append",
                        0,
                        Action::Error(Some(PathBuf::from("/tmp/a:b")))
                    ),
                    ("after_2xx_before_mark", 0, Action::Sleep(250)),
                    ("store_state_write", 0, Action::Error(None)),
                ]
            );
            assert_eq!(rules[1].to_string(), "capture_after_row=5000:pause");
            assert!(parse("").unwrap().is_empty());
        }

        #[test]
        fn rejects_typos_instead_of_ignoring_them() {
            for (spec, needle) in [
                ("after_store_comit_before_ack=exit", "unknown failpoint"),
                ("capture_after_row", "expected NAME="),
                ("capture_after_row=many:pause", "SKIP"),
                ("capture_after_row=halt", "ACTION is"),
                ("after_2xx_before_mark=sleep(soon)", "milliseconds"),
                ("store_append=error(/tmp/x", "missing ')'"),
            ] {
                let err = parse(spec).unwrap_err();
                assert!(err.contains(needle), "{spec}: {err}");
                assert!(err.contains(ENV), "{spec}: {err}");
            }
        }

        #[test]
        fn error_holds_until_its_file_exists_and_skip_counts_hits() {
            let dir = std::env::temp_dir().join(format!("walhook-fp-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let gate = dir.join("cleared");
            let _ = std::fs::remove_file(&gate);
            let rule = &parse(&format!("store_append=2:error({})", gate.display())).unwrap()[0];
            assert_eq!(rule.on_hit(), None, "hit 1 is skipped");
            assert_eq!(rule.on_hit(), None, "hit 2 is skipped");
            assert_eq!(rule.on_hit(), Some((3, &rule.action)), "hit 3 fails");
            assert_eq!(rule.on_hit().map(|(n, _)| n), Some(4), "and so does hit 4");
            std::fs::write(&gate, b"").unwrap();
            assert_eq!(rule.on_hit(), None, "cleared once the file exists");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    /// `cargo test` builds walhook with failpoints (the self dev-dependency in
    /// Cargo.toml); if this fails, the fault tests would test nothing.
    #[test]
    fn test_builds_have_failpoints() {
        // Checked when the tests compile: without the feature they do not build.
        const {
            assert!(
                super::COMPILED,
                "cargo test must enable the failpoints feature"
            )
        };
        // Without WALHOOK_FAILPOINTS in this process, no point triggers.
        assert!(!failpoint!("store_append"));
    }
}
