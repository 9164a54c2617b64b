use serde::{Deserialize, Serialize};

/// Identifies one exchange (one exec, one ping) inside a connection.
pub type StreamId = u32;

/// One frame's payload: a message on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub stream: StreamId,
    pub message: Message,
}

impl Envelope {
    pub fn new(stream: StreamId, message: Message) -> Self {
        Self { stream, message }
    }
}

/// Every message of the protocol. New variants go at the end (postcard encodes the index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Host → agent, first frame of a session.
    Hello {
        version: u32,
        nonce: [u8; 32],
    },
    /// Agent → host: its version, its own nonce, and proof that it holds the secret.
    Welcome {
        version: u32,
        /// The host nonce this answers. A port can still hold the answer to an earlier
        /// client's `Hello` (written while no host was connected, delivered to the next):
        /// the echo tells that stale answer from a forged one.
        echo: [u8; 32],
        nonce: [u8; 32],
        proof: [u8; 32],
        agent: AgentInfo,
    },
    /// Host → agent: proof that the host holds the secret.
    Auth {
        proof: [u8; 32],
    },
    /// Agent → host: the session is authenticated and open.
    Ready,
    /// A request failed, or the session is refused.
    Error(RemoteError),
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Host → agent: start a process; the envelope's stream names it from now on.
    Exec(ExecRequest),
    /// Agent → host: the process runs.
    Started {
        pid: u32,
    },
    Stdin(Vec<u8>),
    /// Host → agent: no more stdin.
    StdinClose,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Agent → host: the process ended; no more output follows on this stream.
    Exited(ExitStatus),
    /// Host → agent: deliver a signal to the process (group) of this stream.
    Signal {
        signal: i32,
    },
    /// Host → agent: flush and power the guest off.
    Shutdown,
    /// Host → agent: the terminal of this stream's process (started with a `tty`) changed size.
    Resize(TtySize),
    /// Host → agent: this guest is a clone; take its own identity. The hostname is set, the
    /// seed is mixed into the kernel's random pool, the clock is set to the host's (a clone's
    /// starts where its template's stopped), and later sessions must prove `secret`.
    SetIdentity {
        hostname: String,
        secret: Vec<u8>,
        seed: Vec<u8>,
        /// The host's wall-clock time, in nanoseconds since the Unix epoch (none when the
        /// host's clock reads before it).
        clock_unix_nanos: Option<u64>,
    },
    /// Agent → host: the identity is set.
    IdentitySet,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// What the agent says about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_version: String,
    pub kernel_release: String,
    pub hostname: String,
}

/// A command to run in the guest, built like [`std::process::Command`]:
/// `ExecRequest::new(["make", "-j2"]).env("CC", "clang").cwd("/src").stdin(true)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: bool,
    tty: Option<TtySize>,
}

impl ExecRequest {
    /// Runs `argv[0]` (looked up in the guest's `PATH`) with the rest as its arguments.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: false,
            tty: None,
        }
    }

    /// Sets `key` to `value` in the command's environment (added to the agent's own).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets every pair of `vars` in the command's environment.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Runs the command in the guest directory `dir` instead of the agent's.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Whether the command reads what the client sends; when false its stdin is `/dev/null`.
    pub fn stdin(mut self, stdin: bool) -> Self {
        self.stdin = stdin;
        self
    }

    /// Runs the command on a pseudo-terminal of this size (a session leader with it as its
    /// controlling terminal): stdout carries everything it writes, stderr stays empty, and
    /// stdin is the keyboard (Ctrl-C is the byte 0x03, turned into SIGINT by the guest's line
    /// discipline).
    pub fn tty(mut self, size: TtySize) -> Self {
        self.tty = Some(size);
        self
    }

    /// The program and its arguments.
    pub fn get_argv(&self) -> &[String] {
        &self.argv
    }

    /// The environment variables set for the command, in order.
    pub fn get_envs(&self) -> &[(String, String)] {
        &self.env
    }

    /// The directory the command runs in, when not the agent's.
    pub fn get_cwd(&self) -> Option<&str> {
        self.cwd.as_deref()
    }

    /// Whether the command reads stdin from the client.
    pub fn get_stdin(&self) -> bool {
        self.stdin
    }

    /// The pseudo-terminal's size, when the command runs on one.
    pub fn get_tty(&self) -> Option<TtySize> {
        self.tty
    }
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            // The guest says which signal: any number, so the sum saturates.
            Self::Signal(signal) => 128i32.saturating_add(signal.clamp(0, 127)),
        }
    }

    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: RemoteErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    VersionMismatch,
    AuthFailed,
    /// The program to exec does not exist.
    NotFound,
    PermissionDenied,
    /// The request was not valid (empty argv, unknown stream, bad state).
    BadRequest,
    Other,
}
