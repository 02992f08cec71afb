//! Running the commands the server pushes: the policy that decides what may
//! run and the runner that runs it. The stream plumbing, the built-ins
//! (ping, info, set-interval, collect-now), expiry checks and the mapping to
//! protobuf live with the caller.
//!
//! An agent that runs commands from the network is a remote-execution
//! service, so this layer is safe by default and honest about every outcome:
//! - [`policy`]: processes are denied unless an allowlist entry (or the
//!   explicit `--allow-any-command` opt-in) allows them; [`Policy::resolve`]
//!   turns the operator's argv into the argv to execute or a [`Refusal`].
//!   [`argspec`] checks each operator argument against its placeholder;
//!   [`allowfile`] reads the file and refuses one others could change;
//!   [`check`] is `monitor-agent --check-commands`.
//! - [`slots`]: at most [`Limits::max_running`] commands at once, refused
//!   rather than queued.
//! - [`exec`]: [`run`] starts the argv without a shell in its own process
//!   group, streams output, caps it, enforces timeout and cancel, and always
//!   leaves no process of the group behind.
//!
//! A caller does, per `RunCommand`: `policy.resolve(&argv)` →
//! `slots.try_acquire()` → `cancel_pair()` → `run(...)` in a `spawn_local`
//! task, holding the [`Slot`] until `run` returns.
//!
//! Nothing under this module may see protobuf types or block the runtime.

pub mod allowfile;
pub mod argspec;
pub mod check;
pub mod exec;
pub mod policy;
pub mod refusal;
pub mod slots;

pub use allowfile::{AllowlistError, DEFAULT_ALLOWLIST_PATH, IfMissing};
pub use argspec::{ArgSpec, Count, Mismatch, Placeholder};
pub use exec::{
    CHILD_ENV, CHILD_WORKING_DIR, CancelSignal, Canceller, ExecEvent, Finished, Limits, Outcome,
    StartError, cancel_pair, run,
};
pub use policy::{
    Allowlist, Arg, Entry, MAX_ARGV_BYTES, MAX_EXTRA_ARGS, ParseError, ParseErrorKind, ParseErrors,
    Policy, RESERVED_NAMES,
};
pub use refusal::Refusal;
pub use slots::{Slot, Slots};
