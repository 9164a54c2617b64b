//! A small typed QMP client: greeting, capability negotiation, commands, with events skipped.
//! QEMU is a host process we started, but its answers are still read with a line limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::QemuError;
use super::qmp_commands::{Command, QmpCapabilities, QueryStatus, RunState};
use crate::Result;

const MAX_LINE: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl QmpClient {
    pub async fn connect(path: &Path) -> Result<Self> {
        let err = |reason: String| QemuError::Qmp {
            path: path.to_owned(),
            reason,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| err(format!("cannot connect: {e}")))?;
        let (read, writer) = stream.into_split();
        let mut client = Self {
            path: path.to_owned(),
            reader: BufReader::new(read),
            writer,
        };
        // An event can come before the greeting (a passt connecting to a restored machine's
        // NIC: NETDEV_STREAM_CONNECTED, seen in the suite); anything else is refused.
        let mut greeting = client.read_message().await?;
        for _ in 0..MAX_MESSAGES_PER_REPLY {
            if QmpReply::of(greeting.clone()) != QmpReply::Event {
                break;
            }
            greeting = client.read_message().await?;
        }
        if greeting.get("QMP").is_none() {
            return Err(err(format!("unexpected greeting {greeting}")).into());
        }
        client.call(&QmpCapabilities {}).await?;
        Ok(client)
    }

    /// Runs a command and returns its answer.
    pub async fn call<C: Command>(&mut self, command: &C) -> Result<C::Answer> {
        let arguments = serde_json::to_value(command)
            .map_err(|e| self.error(format!("cannot encode {}: {e}", C::NAME)))?;
        let arguments = match arguments {
            Value::Object(map) if map.is_empty() => None,
            other => Some(other),
        };
        let answer = self.execute(C::NAME, arguments).await?;
        serde_json::from_value(answer).map_err(|e| {
            self.error(format!("unexpected answer to {}: {e}", C::NAME))
                .into()
        })
    }

    /// The machine's run state.
    pub async fn status(&mut self) -> Result<RunState> {
        Ok(self.call(&QueryStatus {}).await?.status)
    }

    /// Runs a command and returns its `return` value.
    async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| self.error(format!("cannot send {command}: {e}")))?;
        // Events may come first; a monitor that only ever sends events is cut off.
        for _ in 0..MAX_MESSAGES_PER_REPLY {
            match QmpReply::of(self.read_message().await?) {
                QmpReply::Return(value) => return Ok(value),
                QmpReply::Error(error) => {
                    return Err(self.error(format!("{command} failed: {error}")).into());
                }
                QmpReply::Event | QmpReply::Other => {}
            }
        }
        Err(self
            .error(format!(
                "no answer to {command} among {MAX_MESSAGES_PER_REPLY} messages"
            ))
            .into())
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let read = tokio::time::timeout(TIMEOUT, async {
            let mut limited = (&mut self.reader).take(MAX_LINE as u64);
            limited.read_line(&mut line).await
        })
        .await;
        match read {
            Err(_) => Err(self.error("no answer in time".into()).into()),
            Ok(Err(e)) => Err(self.error(format!("read failed: {e}")).into()),
            Ok(Ok(0)) => Err(self.error("connection closed".into()).into()),
            Ok(Ok(_)) => serde_json::from_str(&line)
                .map_err(|e| self.error(format!("invalid JSON: {e}")).into()),
        }
    }

    fn error(&self, reason: String) -> QemuError {
        QemuError::Qmp {
            path: self.path.clone(),
            reason,
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// How many messages (events) may come before a command's answer.
const MAX_MESSAGES_PER_REPLY: usize = 10_000;

/// What one message from QEMU's monitor is.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpReply {
    /// A command's answer.
    Return(Value),
    /// A command's failure, as QEMU describes it.
    Error(String),
    /// An asynchronous event.
    Event,
    /// Anything else (the greeting, or what kiln does not know).
    Other,
}

impl QmpReply {
    pub fn of(message: Value) -> Self {
        if message.get("event").is_some() {
            return Self::Event;
        }
        match message {
            Value::Object(mut map) => {
                if let Some(ret) = map.remove("return") {
                    Self::Return(ret)
                } else if let Some(error) = map.remove("error") {
                    Self::Error(error.to_string())
                } else {
                    Self::Other
                }
            }
            _ => Self::Other,
        }
    }

    /// One line of the monitor, parsed.
    pub fn parse(line: &str) -> Result<Self, String> {
        serde_json::from_str(line)
            .map(Self::of)
            .map_err(|e| format!("invalid JSON: {e}"))
    }
}
