//! Kernel records → the model's contention observations: events become [`Obs`] (symbolized,
//! with the wait classified by the model's one classifier), the in-kernel wait aggregates get
//! their (kind, site), and the kernel learns which wait reasons are contention.

use std::collections::HashMap;
use std::sync::Arc;

use profiler_common::{
    EVENT_FRAMES, Event, TRACKED_REASONS, WaitKey, event_kind as kind, wait_track,
};

use crate::gobin::pclntab::SourceLine;
use crate::model::Location;
use crate::model::contention::{Intent, Obs, Observed, unwrap_deferwraps};
use crate::model::waits::{WAIT_GROUP_WAIT, WaitKind};
use crate::probes::decode::{EventDecoder, hex};

/// The in-kernel aggregation's view of each wait reason code (`GoOffsets::reason_track`):
/// which parks are contention (the model's [`WaitKind`]s, as the accountant counts them), and
/// which need the goroutine's semacquire1 return addresses to name their site (the waits on a
/// semaphore; WaitGroup waits before Go 1.24 park as "semacquire").
pub fn reason_track(reason_text: impl Fn(u8) -> String) -> [u8; TRACKED_REASONS] {
    let mut track = [wait_track::NONE; TRACKED_REASONS];
    for (code, t) in track.iter_mut().enumerate() {
        *t = match WaitKind::from_reason(&reason_text(code as u8)) {
            None => wait_track::NONE,
            Some(k) if k.on_semaphore() => wait_track::PARK_OR_SEMACQUIRE,
            Some(_) => wait_track::PARK,
        };
    }
    track
}

/// The (kind, waiting site) of one in-kernel aggregate: the first user frame of the park's
/// own return addresses, else of the semacquire1 that led to it (a sync wait's park is too deep
/// in the runtime for four return addresses to reach the user; the accountant uses the slow-path
/// entry's for the same reason, and both name the first frame outside runtime and sync). The
/// site is None when neither reaches a user frame; the kind is None for a reason that is not
/// contention (the kernel aggregates none).
pub fn kernel_wait_site(
    decoder: &dyn EventDecoder,
    key: &WaitKey,
) -> Option<(WaitKind, Option<Location>)> {
    let park = symbolize(decoder, &key.park_frames);
    let kind = WaitKind::of(&decoder.reason_text(key.reason as u8), park.in_wait_group)?;
    let site = match park.stack.first() {
        Some(f) => Some(f.clone()),
        None if key.semacquire_frames.iter().any(|&pc| pc != 0) => {
            symbolize(decoder, &key.semacquire_frames)
                .stack
                .first()
                .cloned()
        }
        None => None,
    };
    Some((kind, site))
}

/// An event's return addresses, symbolized for contention accounting.
#[derive(Clone, Debug)]
struct Symbolized {
    stack: Arc<[Location]>,
    /// One of the addresses is in `sync.(*WaitGroup).Wait` (see [`WaitKind::of`]).
    in_wait_group: bool,
}

fn location(l: SourceLine) -> Location {
    Location {
        function: l.function.into(),
        file: l.file.into(),
        line: l.line,
    }
}

fn symbolize(decoder: &dyn EventDecoder, frames: &[u64]) -> Symbolized {
    let (stack, _) = decoder.user_stack(frames);
    let in_wait_group = frames.iter().any(|&pc| {
        pc != 0
            && decoder
                .user_stack(&[pc])
                .1
                .is_some_and(|f| f.function == WAIT_GROUP_WAIT)
    });
    Symbolized {
        stack: unwrap_deferwraps(stack.into_iter().map(location).collect()).into(),
        in_wait_group,
    }
}

/// Kernel events → observations for one session (one decoder), with the symbolized stacks
/// cached per distinct set of return addresses: a busy program repeats a few hundred of them,
/// and a contended lock's slow path fires hundreds of thousands of times a second.
#[derive(Debug, Default)]
pub struct Observer {
    stacks: HashMap<[u64; EVENT_FRAMES], Symbolized>,
}

/// Bound on the stack cache (distinct return-address sets), so a long session cannot grow
/// without limit.
const OBSERVER_CACHE_MAX: usize = 1 << 16;

impl Observer {
    pub fn new() -> Self {
        Observer::default()
    }

    /// The same observation as [`observe`], from the cache when these return addresses were
    /// seen before. Only for events of the decoder's own target (one session).
    pub fn observe(&mut self, decoder: &dyn EventDecoder, e: &Event) -> Obs {
        let sym = match self.stacks.get(&e.frames) {
            Some(sym) => sym.clone(),
            None => {
                let sym = symbolize(decoder, &e.frames);
                if self.stacks.len() >= OBSERVER_CACHE_MAX {
                    self.stacks.clear();
                }
                self.stacks.insert(e.frames, sym.clone());
                sym
            }
        };
        obs_of(decoder, e, sym)
    }
}

/// Kernel event → observation, symbolized by the target's decoder.
pub fn observe(decoder: &dyn EventDecoder, e: &Event) -> Obs {
    obs_of(decoder, e, symbolize(decoder, &e.frames))
}

fn obs_of(decoder: &dyn EventDecoder, e: &Event, sym: Symbolized) -> Obs {
    let object = || hex(decoder.object_addr(e, None));
    let intent = |intent| Observed::Intent {
        intent,
        object: object(),
    };
    let op = match e.kind {
        kind::PARK => {
            let reason = decoder.reason_text(e.reason);
            Observed::Park {
                kind: WaitKind::of(&reason, sym.in_wait_group),
                object: hex(decoder.object_addr(e, Some(&reason))),
            }
        }
        kind::WAKE => Observed::Wake { woken: e.peer_goid },
        kind::LOCK => intent(Intent::Mutex),
        kind::RWLOCK => intent(Intent::RwWrite),
        kind::RLOCK_WAIT => intent(Intent::RwRead),
        kind::SEM_ACQUIRE => intent(Intent::Sema),
        kind::UNLOCK
        | kind::RWUNLOCK
        | kind::RUNLOCK_SLOW
        | kind::SEM_RELEASE
        | kind::CHAN_SEND
        | kind::CHAN_RECV
        | kind::CHAN_CLOSE
        | kind::SELECT => Observed::Release { object: object() },
        _ => Observed::Other,
    };
    Obs {
        ts_ns: e.ts_ns,
        goid: e.goid,
        op,
        stack: sym.stack,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::contention::is_machinery;

    /// Symbolizes pc N as the function named in `names[N % len]`, line N, file main.go.
    pub(crate) struct Lines(pub &'static [&'static str]);

    impl EventDecoder for Lines {
        fn decode(&self, _: &Event) -> crate::probes::decode::TraceEvent {
            unreachable!("observations do not build whole decoded events")
        }
        fn user_stack(&self, pcs: &[u64]) -> (Vec<SourceLine>, Option<SourceLine>) {
            let line = |pc: u64| SourceLine {
                function: self.0[pc as usize % self.0.len()].to_string(),
                file: "/src/app/main.go".into(),
                line: pc as u32,
            };
            let lines: Vec<_> = pcs
                .iter()
                .filter(|&&pc| pc != 0)
                .map(|&pc| line(pc))
                .collect();
            let innermost = lines.first().cloned();
            let skip = lines
                .iter()
                .take_while(|l| is_machinery(&l.function))
                .count();
            (lines[skip..].to_vec(), innermost)
        }
        fn reason_text(&self, code: u8) -> String {
            [
                "semacquire",
                "sync.Mutex.Lock",
                "chan receive",
                "sleep",
                "select",
            ]
            .get(code as usize)
            .unwrap_or(&"GC worker (idle)")
            .to_string()
        }
        fn object_addr(&self, e: &Event, reason: Option<&str>) -> u64 {
            e.object - u64::from(reason == Some("chan receive")) * 8
        }
    }

    pub(crate) fn frame(f: &str, line: u32) -> Location {
        Location {
            function: f.into(),
            file: "/src/app/main.go".into(),
            line,
        }
    }

    #[test]
    fn reason_track_marks_contention_and_sync_waits() {
        let decoder = Lines(&["main.run"]);
        let track = reason_track(|code| decoder.reason_text(code));
        assert_eq!(
            track[..6],
            [
                wait_track::PARK_OR_SEMACQUIRE,
                wait_track::PARK_OR_SEMACQUIRE,
                wait_track::PARK,
                wait_track::NONE,
                wait_track::PARK,
                wait_track::NONE,
            ]
        );
        assert!(track[6..].iter().all(|&t| t == wait_track::NONE));
    }

    /// A kernel aggregate is named by the first user frame of its park, else of its
    /// semacquire1; a WaitGroup wait parked as "semacquire" is told by its park's frames, as
    /// the accountant tells it from the same park event.
    #[test]
    fn kernel_aggregates_are_named_by_their_first_user_frame() {
        let decoder = Lines(&[
            "runtime.gopark",
            "runtime.semacquire1",
            "sync.(*Mutex).lockSlow",
            "sync.(*WaitGroup).Wait",
            "main.run",
            "main.serve",
            "main.serve.deferwrap1",
        ]);
        let key = |reason: u8, park_frames, semacquire_frames| WaitKey {
            reason: u64::from(reason),
            park_frames,
            semacquire_frames,
        };
        let site = |f: &str, line| Some(frame(f, line));
        let cases = [
            // A Mutex park whose own frames stay in the runtime: semacquire1's name the site.
            (
                key(1, [7, 8, 9, 0], [8, 9, 4, 5]),
                WaitKind::Mutex,
                site("main.run", 4),
            ),
            // One whose own frames reach user code.
            (
                key(1, [7, 8, 9, 5], [8, 12, 0, 0]),
                WaitKind::Mutex,
                site("main.serve", 5),
            ),
            // A WaitGroup wait parked as plain "semacquire"; a plain semaphore.
            (
                key(0, [7, 8, 3, 4], [8, 3, 4, 0]),
                WaitKind::Waitgroup,
                site("main.run", 4),
            ),
            (
                key(0, [7, 8, 9, 0], [8, 13, 0, 0]),
                WaitKind::Semaphore,
                site("main.serve", 13),
            ),
            // A channel receive; a park with no user frame at all.
            (
                key(2, [7, 12, 0, 0], [0; EVENT_FRAMES]),
                WaitKind::ChanRecv,
                site("main.serve", 12),
            ),
            (
                key(2, [7, 8, 0, 0], [0; EVENT_FRAMES]),
                WaitKind::ChanRecv,
                None,
            ),
        ];
        for (k, kind, site) in cases {
            assert_eq!(kernel_wait_site(&decoder, &k), Some((kind, site)), "{k:?}");
            // The accountant names the park event with the same frames alike.
            let park = observe(
                &decoder,
                &Event {
                    kind: kind::PARK,
                    reason: k.reason as u8,
                    frames: k.park_frames,
                    object: 0x1000,
                    ..Event::default()
                },
            );
            assert!(
                matches!(park.op, Observed::Park { kind: Some(k), .. } if k == kind),
                "{k:?}"
            );
        }
        assert_eq!(
            kernel_wait_site(&decoder, &key(3, [7, 12, 0, 0], [0; 4])),
            None
        );
    }

    #[test]
    fn cached_observations_equal_uncached_ones() {
        let decoder = Lines(&[
            "runtime.gopark",
            "sync.(*WaitGroup).Wait",
            "main.run",
            "main.run.deferwrap1",
        ]);
        let event = |kind: u16, reason: u8, frames: [u64; EVENT_FRAMES]| Event {
            ts_ns: 7,
            goid: 3,
            peer_goid: 4,
            object: 0x1000,
            kind,
            reason,
            frames,
            ..Event::default()
        };
        let events = [
            event(kind::PARK, 0, [4, 5, 6, 0]),
            event(kind::PARK, 0, [4, 6, 0, 0]),
            event(kind::PARK, 2, [4, 6, 0, 0]),
            event(kind::LOCK, 0, [4, 7, 6, 0]),
            event(kind::UNLOCK, 0, [4, 7, 6, 0]),
            event(kind::WAKE, 0, [0; EVENT_FRAMES]),
            event(kind::RLOCK_WAIT, 0, [4, 5, 6, 0]),
        ];
        let mut observer = Observer::new();
        for _ in 0..2 {
            for e in &events {
                assert_eq!(observer.observe(&decoder, e), observe(&decoder, e));
            }
        }
        let o = observer.observe(&decoder, &events[0]);
        assert_eq!(
            o.op,
            Observed::Park {
                kind: Some(WaitKind::Waitgroup),
                object: "0x1000".into()
            }
        );
        assert_eq!(*o.stack, [frame("main.run", 6)]);
        // The defer wrapper followed by its function: the function's frame alone.
        let o = observer.observe(&decoder, &events[3]);
        assert_eq!(*o.stack, [frame("main.run", 6)]);
        let o = observer.observe(&decoder, &events[2]);
        assert!(matches!(o.op, Observed::Park { ref object, .. } if object == "0xff8"));
    }
}
