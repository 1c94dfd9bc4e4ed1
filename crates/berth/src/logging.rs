//! Log output as Distribution's `log` section configures it: level, formatter (`text`, `json`,
//! `logstash`) and static `fields` added to every line. One line per event, on stderr.

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Logstash,
}

/// Writes events in one of the [`Format`]s, with the configured static fields.
pub struct LineFormat {
    format: Format,
    fields: Map<String, Value>,
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.insert(field.name().to_string(), value.into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_string(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .insert(field.name().to_string(), format!("{value:?}").into());
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut c = Collect::default();
        event.record(&mut c);
        let meta = event.metadata();
        let time = crate::time::rfc3339(std::time::SystemTime::now());
        let level = meta.level().as_str().to_ascii_lowercase();
        match self.format {
            Format::Text => {
                write!(writer, "time=\"{time}\" level={level} msg={:?}", c.message)?;
                for (k, v) in self.fields.iter().chain(c.fields.iter()) {
                    match v {
                        Value::String(s) => write!(writer, " {k}={s:?}")?,
                        v => write!(writer, " {k}={v}")?,
                    }
                }
                writeln!(writer)
            }
            Format::Json | Format::Logstash => {
                let mut line = self.fields.clone();
                line.extend(c.fields);
                if self.format == Format::Logstash {
                    line.insert("@timestamp".into(), time.into());
                    line.insert("@version".into(), "1".into());
                    line.insert("message".into(), c.message.into());
                } else {
                    line.insert("time".into(), time.into());
                    line.insert("msg".into(), c.message.into());
                }
                line.insert("level".into(), level.into());
                line.insert("target".into(), meta.target().into());
                writeln!(writer, "{}", Value::Object(line))
            }
        }
    }
}

/// Installs the global subscriber. `level` is a tracing filter (e.g. `info`); `RUST_LOG`
/// overrides it when set.
///
/// Lines are formatted on the logging thread and written to stderr by a background thread, so
/// request handling never waits on the write (nor pays a system call per line when busy); the
/// queue blocks rather than drops when full. Keep the returned guard alive until exit: dropping
/// it flushes what is queued.
pub fn init(
    level: &str,
    format: Format,
    fields: Map<String, Value>,
) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .event_format(LineFormat { format, fields })
        .try_init();
    guard
}
