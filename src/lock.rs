//! Taking a lock, failing closed. This is the one way the endpoint and the store handle a
//! poisoned `Mutex` or `RwLock`.
//!
//! A lock is poisoned when a thread panicked while holding it, possibly half-way through an
//! update: the data behind it (a replay registry, the live-session table, the store's
//! index) may break the invariants every other user relies on. Carrying on with it
//! (`into_inner`) could let a replayed credential through or sweep live registrations;
//! `unwrap()` would spread the panic to every later request. So the caller gets
//! [`Poisoned`] and refuses what it was asked to do (an internal error for a request, a
//! skipped cleanup pass, a denial for a read of the store's inputs), and says so in the log.
//! Restarting the process is the repair.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A lock found poisoned; names what it guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "internal error: the {0} lock is poisoned (a thread panicked while holding it); restart the process"
)]
pub struct Poisoned(pub &'static str);

pub fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    m.lock().map_err(|_| Poisoned(what))
}

pub fn read<'a, T>(
    l: &'a RwLock<T>,
    what: &'static str,
) -> Result<RwLockReadGuard<'a, T>, Poisoned> {
    l.read().map_err(|_| Poisoned(what))
}

pub fn write<'a, T>(
    l: &'a RwLock<T>,
    what: &'static str,
) -> Result<RwLockWriteGuard<'a, T>, Poisoned> {
    l.write().map_err(|_| Poisoned(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poison<T: Send + 'static>(m: std::sync::Arc<Mutex<T>>) {
        let _ = std::thread::spawn(move || {
            let _g = m.lock().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
    }

    #[test]
    fn a_poisoned_mutex_is_an_error_not_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        assert_eq!(*lock(&m, "test").unwrap(), 1);
        poison(m.clone());
        let e = lock(&m, "replay state").unwrap_err();
        assert_eq!(e, Poisoned("replay state"));
        assert!(e.to_string().contains("replay state lock is poisoned"));
    }

    #[test]
    fn a_poisoned_rwlock_is_an_error_for_readers_and_writers() {
        let l = std::sync::Arc::new(RwLock::new(1));
        assert_eq!(*read(&l, "index").unwrap(), 1);
        *write(&l, "index").unwrap() = 2;
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _g = l2.write().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert_eq!(read(&l, "index").unwrap_err(), Poisoned("index"));
        assert_eq!(write(&l, "index").unwrap_err(), Poisoned("index"));
    }
}
