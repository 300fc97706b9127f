//! A small `tracing` subscriber that writes one line per event to stderr (journald adds the
//! rest). Written here instead of pulling tracing-subscriber into the agent: the agent needs
//! no spans, filters or formats, and the binary should stay small.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The environment variable that sets the level (`error`, `warn`, `info`, `debug`, `trace`).
pub const ENV_LOG: &str = "ONBOARDING_AGENT_LOG";

pub struct StderrLogger {
    max: Level,
}

pub fn parse_level(s: &str) -> Option<Level> {
    match s.trim().to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" | "warning" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    }
}

/// Installs the logger as the global default; the level comes from `ONBOARDING_AGENT_LOG`
/// (default `info`).
pub fn init() {
    let max = std::env::var(ENV_LOG)
        .ok()
        .and_then(|v| parse_level(&v))
        .unwrap_or(Level::INFO);
    let _ = tracing::subscriber::set_global_default(StderrLogger { max });
}

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

/// One log line: `<time> <LEVEL> <message> <key=value...>`. Control characters are escaped:
/// messages carry text from the endpoint (error messages, codes, paths), which must not be
/// able to forge a second log line or send escape sequences to an admin's terminal.
pub fn format_line(time: &str, level: &Level, message: &str, rest: &str) -> String {
    format!(
        "{time} {level:>5} {}{}\n",
        escape_control(message),
        escape_control(rest)
    )
}

/// Text safe to print on one line of a log or a terminal: control characters (newlines,
/// ESC, DEL, the C1 range) and the Unicode marks that reorder or hide text are written as
/// Rust escapes (`\n`, `\u{1b}`); a backslash stays as it is, everything else too.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Subscriber for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        let now = time::OffsetDateTime::now_utc();
        let time = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        );
        let line = format_line(
            &time,
            event.metadata().level(),
            &fields.message,
            &fields.rest,
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_line_format() {
        assert_eq!(parse_level("WARN"), Some(Level::WARN));
        assert_eq!(parse_level("verbose"), None);
        assert_eq!(
            format_line("T", &Level::INFO, "onboarded", " war=\"ns/x\""),
            "T  INFO onboarded war=\"ns/x\"\n"
        );
        // What an endpoint could put in an error message: a forged second line, a
        // terminal escape (clear screen, set title) and a right-to-left override.
        let hostile = "denied\n2026-01-01T00:00:00.000Z  INFO onboarded\x1b[2J\x1b]0;pwned\x07\u{202e}txt.exe\u{9b}";
        let line = format_line("T", &Level::WARN, hostile, " code=\"x\ny\"");
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(!line.contains('\x1b') && !line.contains('\u{202e}') && !line.contains('\u{9b}'));
        assert_eq!(
            line,
            "T  WARN denied\\n2026-01-01T00:00:00.000Z  INFO onboarded\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{202e}txt.exe\\u{9b} code=\"x\\ny\"\n"
        );
        // Ordinary text, tabs aside, is left alone (no copy).
        assert!(matches!(
            escape_control("wrote /etc/certs/ü"),
            std::borrow::Cow::Borrowed(_)
        ));
        let l = StderrLogger { max: Level::INFO };
        assert_eq!(l.max_level_hint(), Some(LevelFilter::INFO));
    }
}
