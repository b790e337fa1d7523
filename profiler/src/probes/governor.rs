//! The overhead governor: a per-process CPU budget for the probes. The target's health wins
//! over our completeness: a group whose estimated cost (hits/s × ns per hit) pushes the total
//! over budget is detached for a back-off period, then re-attached, and every action is
//! reported. Pure logic: the session feeds it measured rates and carries out its actions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::probes::groups::ProbeGroup;

#[derive(Clone, Debug)]
pub struct GovernorConfig {
    /// CPU time the probes may cost the target, as a fraction of one core (0.01 = 1%).
    pub budget: f64,
    /// First back-off; doubles each time the same group is detached again, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            budget: 0.01,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(80),
        }
    }
}

/// One attached group's measured load over the last window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupLoad {
    pub group: ProbeGroup,
    pub hits_per_s: f64,
    /// Estimated CPU cost, ns per second of wall time (1e7 = 1% of a core).
    pub cost_ns_per_s: f64,
}

impl GroupLoad {
    pub fn fraction(&self) -> f64 {
        self.cost_ns_per_s / 1e9
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Detach {
        group: ProbeGroup,
        hits_per_s: f64,
        /// Estimated cost as a fraction of one core.
        cost: f64,
        budget: f64,
        backoff_s: f64,
    },
    Reattach {
        group: ProbeGroup,
    },
}

#[derive(Clone, Debug, Default)]
struct GroupState {
    detached_until: Option<Instant>,
    next_backoff: Option<Duration>,
}

pub struct Governor {
    cfg: GovernorConfig,
    states: BTreeMap<ProbeGroup, GroupState>,
}

impl Governor {
    pub fn new(cfg: GovernorConfig) -> Self {
        Governor {
            cfg,
            states: BTreeMap::new(),
        }
    }

    pub fn budget(&self) -> f64 {
        self.cfg.budget
    }

    /// Groups currently held off.
    pub fn detached(&self) -> Vec<ProbeGroup> {
        self.states
            .iter()
            .filter(|(_, s)| s.detached_until.is_some())
            .map(|(g, _)| *g)
            .collect()
    }

    /// Decide what to do given the loads of the attached groups. Detaches the most expensive
    /// groups until the rest fit the budget; re-attaches groups whose back-off is over.
    pub fn tick(&mut self, now: Instant, loads: &[GroupLoad]) -> Vec<Action> {
        let mut actions = Vec::new();
        let budget_ns = self.cfg.budget * 1e9;
        let mut live: Vec<GroupLoad> = loads.to_vec();
        let mut total: f64 = live.iter().map(|l| l.cost_ns_per_s).sum();
        while total > budget_ns && !live.is_empty() {
            let (i, worst) = live
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.cost_ns_per_s.total_cmp(&b.1.cost_ns_per_s))
                .expect("not empty");
            live.remove(i);
            total -= worst.cost_ns_per_s;
            let state = self.states.entry(worst.group).or_default();
            let backoff = state.next_backoff.unwrap_or(self.cfg.backoff);
            state.detached_until = Some(now + backoff);
            state.next_backoff = Some((backoff * 2).min(self.cfg.max_backoff));
            actions.push(Action::Detach {
                group: worst.group,
                hits_per_s: worst.hits_per_s,
                cost: worst.fraction(),
                budget: self.cfg.budget,
                backoff_s: backoff.as_secs_f64(),
            });
        }
        for (group, state) in &mut self.states {
            if let Some(until) = state.detached_until
                && until <= now
                && !actions
                    .iter()
                    .any(|a| matches!(a, Action::Detach { group: g, .. } if g == group))
            {
                state.detached_until = None;
                actions.push(Action::Reattach { group: *group });
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(group: ProbeGroup, hits: f64, ns: f64) -> GroupLoad {
        GroupLoad {
            group,
            hits_per_s: hits,
            cost_ns_per_s: hits * ns,
        }
    }

    #[test]
    fn under_budget_nothing_happens() {
        let mut g = Governor::new(GovernorConfig::default());
        let t = Instant::now();
        // 5k hits/s × 1 µs = 0.5% of a core.
        assert!(
            g.tick(t, &[load(ProbeGroup::Park, 5000.0, 1000.0)])
                .is_empty()
        );
    }

    #[test]
    fn the_most_expensive_group_goes_first_and_comes_back_after_backoff() {
        let mut g = Governor::new(GovernorConfig::default());
        let t0 = Instant::now();
        let loads = [
            load(ProbeGroup::Park, 5000.0, 1000.0),        // 0.5%
            load(ProbeGroup::Channels, 200_000.0, 1500.0), // 30%
        ];
        let actions = g.tick(t0, &loads);
        assert_eq!(actions.len(), 1);
        match &actions[0] {
            Action::Detach {
                group,
                cost,
                backoff_s,
                ..
            } => {
                assert_eq!(*group, ProbeGroup::Channels);
                assert!((cost - 0.3).abs() < 1e-9);
                assert_eq!(*backoff_s, 5.0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.detached(), vec![ProbeGroup::Channels]);
        // Still backing off.
        assert!(g.tick(t0 + Duration::from_secs(1), &loads[..1]).is_empty());
        let back = g.tick(t0 + Duration::from_secs(5), &loads[..1]);
        assert_eq!(
            back,
            vec![Action::Reattach {
                group: ProbeGroup::Channels
            }]
        );
        // Over budget again: the back-off doubles.
        let again = g.tick(t0 + Duration::from_secs(6), &loads);
        assert!(matches!(again[0], Action::Detach { backoff_s, .. } if backoff_s == 10.0));
    }

    #[test]
    fn detaches_as_many_groups_as_needed() {
        let mut g = Governor::new(GovernorConfig {
            budget: 0.001,
            ..GovernorConfig::default()
        });
        let loads = [
            load(ProbeGroup::Park, 5000.0, 1000.0),  // 0.5%
            load(ProbeGroup::Locks, 3000.0, 1000.0), // 0.3%
            load(ProbeGroup::Lifecycle, 10.0, 8000.0),
        ];
        let actions = g.tick(Instant::now(), &loads);
        let groups: Vec<ProbeGroup> = actions
            .iter()
            .map(|a| match a {
                Action::Detach { group, .. } => *group,
                Action::Reattach { group } => *group,
            })
            .collect();
        assert_eq!(groups, vec![ProbeGroup::Park, ProbeGroup::Locks]);
    }
}
