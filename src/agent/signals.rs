//! Signals without an async runtime: block SIGTERM/SIGINT/SIGHUP in every thread and have one
//! thread take them with sigwait(2), turning each into a message for the main loop. No
//! handler runs in signal context, and nothing polls.

/// The signals the agent takes.
pub const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the handled signals in the calling thread. Call it first in `main`, before any
/// thread starts, so every later thread inherits the mask (child processes do not: std
/// resets the mask on exec).
pub fn block() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: set is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread that waits for the handled signals and calls `on_signal` for each.
pub fn spawn_waiter(on_signal: impl Fn(libc::c_int) + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: set is initialised and blocked in this thread (inherited).
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc == 0 {
                    on_signal(sig);
                }
            }
        })
        .map(|_| ())
}

pub fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
