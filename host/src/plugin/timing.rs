//! Where a probed call's time goes: in the plugin's code, crossing the
//! boundary, or in the host. `freshet plugin test` shows it per row; the
//! pipelines' calls are not timed (the hook costs a clock read per crossing).
//!
//! wasmtime reports every transition between host and guest code through a
//! store's call hook; [`Clock`] adds up the time on each side of them. What
//! the hook does not see, the rest of a call's wall time, is the boundary:
//! lowering the inputs into the guest's memory, lifting its answer out, and
//! entering and leaving the sandbox.

use std::time::{Duration, Instant};
use wasmtime::CallHook;

/// Where a call's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Running the plugin's code (its allocator too, which the host calls
    /// to place the inputs).
    pub guest: Duration,
    /// Crossing the boundary: the call's wall time the guest and the host's
    /// functions did not take.
    pub boundary: Duration,
    /// In the host: the functions the plugin called (log, settings, event
    /// ids), the runtime's own (growing memory) and the checks of its
    /// answer.
    pub host: Duration,
}

/// The sum of two calls' timings (a 0.1 probe's map and decide calls).
impl std::ops::Add for Timing {
    type Output = Timing;

    fn add(self, other: Timing) -> Timing {
        Timing {
            guest: self.guest + other.guest,
            boundary: self.boundary + other.boundary,
            host: self.host + other.host,
        }
    }
}

/// The time on each side of a store's transitions since it was armed.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    mark: Option<Instant>,
    guest: Duration,
    host: Duration,
    /// Host functions entered and not yet left: a host function that
    /// returns a string calls the guest's allocator from inside itself.
    host_depth: u32,
}

impl Clock {
    /// Notes one transition (the store's call hook).
    pub fn transition(&mut self, hook: CallHook) {
        let now = Instant::now();
        let since = self.mark.map_or(Duration::ZERO, |mark| now - mark);
        match hook {
            // From the top (lowering the inputs: the boundary's) or from
            // inside a host function (placing its answer: the host's).
            CallHook::CallingWasm if self.host_depth > 0 => self.host += since,
            CallHook::CallingWasm => {}
            CallHook::ReturningFromWasm => self.guest += since,
            CallHook::CallingHost => {
                self.guest += since;
                self.host_depth += 1;
            }
            CallHook::ReturningFromHost => {
                self.host += since;
                self.host_depth = self.host_depth.saturating_sub(1);
            }
        }
        self.mark = Some(now);
    }

    /// The timing of a call that took `wall` and whose answer the host
    /// checked in `checks`.
    pub fn timing(&self, wall: Duration, checks: Duration) -> Timing {
        Timing {
            guest: self.guest,
            boundary: wall.saturating_sub(self.guest + self.host),
            host: self.host + checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_between_transitions_goes_to_the_side_that_ran() {
        let mut clock = Clock::default();
        clock.transition(CallHook::CallingWasm);
        std::thread::sleep(Duration::from_millis(20));
        clock.transition(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(10));
        clock.transition(CallHook::ReturningFromHost);
        clock.transition(CallHook::ReturningFromWasm);
        assert!(clock.guest >= Duration::from_millis(20), "{clock:?}");
        assert!(clock.host >= Duration::from_millis(10), "{clock:?}");
        let wall = Duration::from_secs(10);
        let timing = clock.timing(wall, Duration::from_millis(1));
        assert_eq!(
            timing.boundary,
            wall.saturating_sub(clock.guest + clock.host)
        );
        assert_eq!(timing.host, clock.host + Duration::from_millis(1));
    }

    #[test]
    fn a_host_function_placing_its_answer_in_the_guest_stays_host_time() {
        let mut clock = Clock::default();
        clock.transition(CallHook::CallingWasm);
        clock.transition(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(10));
        // The host function calls the guest's allocator for its string.
        clock.transition(CallHook::CallingWasm);
        clock.transition(CallHook::ReturningFromWasm);
        clock.transition(CallHook::ReturningFromHost);
        clock.transition(CallHook::ReturningFromWasm);
        assert!(clock.host >= Duration::from_millis(10), "{clock:?}");
        assert!(clock.guest < Duration::from_millis(10), "{clock:?}");
    }
}
