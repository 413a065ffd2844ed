//! User names by uid, through NSS (uzers: `getpwuid_r`, and `getpwent` once at start), so users
//! from LDAP, sssd or systemd-homed are named as `id` names them, not only those in /etc/passwd.
//!
//! An NSS lookup can block (a directory server that does not answer), so none runs on the
//! event loop: the users NSS lists at start are read then (before the loop), and a uid missing
//! from them is looked up on a worker thread; until the answer is back it has no name, and
//! the answer (a name, or none) is kept.
use std::sync::{OnceLock, mpsc};

use foldhash::HashMap;

#[derive(Default)]
pub struct UserNames {
    /// `None`: asked and NSS has no such user, or the answer is not back yet.
    names: HashMap<u32, Option<String>>,
    /// To the lookup thread, started on the first miss.
    ask: Option<mpsc::Sender<u32>>,
    answers: Option<mpsc::Receiver<(u32, Option<String>)>>,
}

impl UserNames {
    /// Starts with every user NSS enumerates (local files, and directory services that allow
    /// enumeration).
    pub fn from_host() -> Self {
        UserNames {
            names: enumerated()
                .iter()
                .map(|(&uid, name)| (uid, Some(name.clone())))
                .collect(),
            ..Default::default()
        }
    }

    /// The name of `uid`, if known by now; a uid not seen before is looked up in the
    /// background and named from then on.
    pub fn get(&mut self, uid: u32) -> Option<&str> {
        self.take_answers();
        if let std::collections::hash_map::Entry::Vacant(e) = self.names.entry(uid) {
            e.insert(None);
            self.look_up(uid);
        }
        self.names.get(&uid).and_then(|n| n.as_deref())
    }

    fn take_answers(&mut self) {
        let Some(rx) = &self.answers else { return };
        while let Ok((uid, name)) = rx.try_recv() {
            self.names.insert(uid, name);
        }
    }

    fn look_up(&mut self, uid: u32) {
        if self.ask.is_none() {
            let (ask, asked) = mpsc::channel::<u32>();
            let (answer, answers) = mpsc::channel();
            let started = std::thread::Builder::new()
                .name("llmwatch-users".into())
                .spawn(move || {
                    // Ends when the table (the sender) is dropped.
                    for uid in asked {
                        let name =
                            uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned());
                        if answer.send((uid, name)).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = started {
                log::warn!(
                    "cannot start the user-name lookup thread ({e}): uids not known at start stay unnamed"
                );
                return;
            }
            self.ask = Some(ask);
            self.answers = Some(answers);
        }
        if let Some(ask) = &self.ask {
            let _ = ask.send(uid);
        }
    }
}

/// Every user NSS enumerates, read once per process.
fn enumerated() -> &'static HashMap<u32, String> {
    static USERS: OnceLock<HashMap<u32, String>> = OnceLock::new();
    USERS.get_or_init(|| {
        // SAFETY: `all_users` walks NSS with setpwent/getpwent/endpwent, which share one
        // global cursor. This runs once per process (the OnceLock) and nothing else in the
        // agent calls those functions, so no other walk can move the cursor under it; the
        // iterator is used up (and endpwent called) before this returns.
        let users = unsafe { uzers::all_users() };
        users
            .map(|u| (u.uid(), u.name().to_string_lossy().into_owned()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn users_listed_at_start_are_named_at_once() {
        let mut names = UserNames::from_host();
        assert_eq!(names.get(0), Some("root"));
    }

    #[test]
    fn a_uid_not_known_at_start_is_looked_up_off_the_caller_and_named_later() {
        // Empty at start, as for a user NSS does not enumerate.
        let mut names = UserNames::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while names.get(0).is_none() {
            assert!(Instant::now() < deadline, "uid 0 never named");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(names.get(0), Some("root"));
    }
}
