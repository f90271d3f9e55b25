//! What the answer to a callout means for each request it carried, free of host calls: which
//! requests are decided on limitd's answer, which get their rules' failure mode, which only
//! settle lease blocks, and which rules each decision is counted under. The glue
//! (`glue/vm.rs`) carries the plan out: counters, lease blocks, the deny cache, and resuming or
//! answering requests.

use protocol::CheckResponse;

use crate::batch::{CheckAnswer, Entry, Live, REFILL};
use crate::verdict::{CalloutError, Check, Decision};

/// What a rule's counters count, per rule (`ratelimit.rule.<rule>.<outcome>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    /// The request was allowed by the global limit (from limitd or a lease).
    Allowed,
    /// This rule denied the request (limitd, or the deny cache).
    Denied,
    /// This shadow rule would have denied it.
    ShadowDenied,
    /// limitd could not decide: the rule's failure mode or fallback limit did.
    FailureMode,
    /// Denied from the deny cache, without a callout (also counted as `denied`).
    DenyCacheHits,
    /// Admitted from a lease block, without a callout (also counted as `allowed`).
    LeaseAdmitted,
    /// limitd leased units to this Envoy for the rule.
    LeaseGrants,
}

impl RuleOutcome {
    pub const ALL: [RuleOutcome; 7] = [
        RuleOutcome::Allowed,
        RuleOutcome::Denied,
        RuleOutcome::ShadowDenied,
        RuleOutcome::FailureMode,
        RuleOutcome::DenyCacheHits,
        RuleOutcome::LeaseAdmitted,
        RuleOutcome::LeaseGrants,
    ];

    /// The last part of the counter's name.
    pub fn name(self) -> &'static str {
        match self {
            RuleOutcome::Allowed => "allowed",
            RuleOutcome::Denied => "denied",
            RuleOutcome::ShadowDenied => "shadow_denied",
            RuleOutcome::FailureMode => "failure_mode",
            RuleOutcome::DenyCacheHits => "deny_cache_hits",
            RuleOutcome::LeaseAdmitted => "lease_admitted",
            RuleOutcome::LeaseGrants => "lease_grants",
        }
    }
}

/// The rules of a check's enforced (non-shadow) hits.
pub fn enforced_rules(check: &Check) -> impl Iterator<Item = usize> + '_ {
    check
        .rules
        .iter()
        .zip(&check.hits)
        .filter(|(_, hit)| !hit.shadow)
        .map(|(&rule, _)| rule)
}

/// The rule counters a decision on limitd's `answer` to `check` adds to: every shadow rule
/// limitd would have denied; then, if the request is allowed, every enforced rule, else every
/// enforced rule that denied it.
pub fn rule_outcomes(
    check: &Check,
    answer: &CheckResponse,
    decision: &Decision,
) -> Vec<(usize, RuleOutcome)> {
    let by_hit = || check.rules.iter().zip(&check.hits).zip(&answer.hits);
    let mut outcomes: Vec<(usize, RuleOutcome)> = by_hit()
        .filter(|((_, hit), result)| hit.shadow && !result.allowed)
        .map(|((&rule, _), _)| (rule, RuleOutcome::ShadowDenied))
        .collect();
    match decision {
        Decision::Allow { .. } => {
            outcomes.extend(enforced_rules(check).map(|rule| (rule, RuleOutcome::Allowed)))
        }
        Decision::Reply(_) => outcomes.extend(
            by_hit()
                .filter(|((_, hit), result)| !hit.shadow && !result.allowed)
                .map(|((&rule, _), _)| (rule, RuleOutcome::Denied)),
        ),
    }
    outcomes
}

/// What to do with one entry of an answered callout.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// Decide the request `context_id` on limitd's answer.
    Decide {
        context_id: u32,
        check: Check,
        answer: CheckResponse,
    },
    /// Only settle the lease asks of `check` with `answer`: a refill's, or those of a request
    /// whose client left (nothing else of it may be counted; what limitd leased is still good).
    SettleLeases {
        check: Check,
        answer: Option<CheckResponse>,
    },
}

/// An answered callout, sorted: the entries decided or settled, and the live requests limitd
/// could not decide, with the first reason it gave (they get their rules' failure mode).
#[derive(Debug, PartialEq, Eq)]
pub struct Sorted {
    pub fates: Vec<Fate>,
    pub failed: Vec<Entry>,
    pub error: Option<CalloutError>,
}

/// Sorts the entries of a batch by limitd's `answers` (one per entry, in order).
pub fn sort_answers(batch: Vec<Entry>, answers: Vec<CheckAnswer>, live: &Live) -> Sorted {
    let mut sorted = Sorted {
        fates: Vec::with_capacity(batch.len()),
        failed: Vec::new(),
        error: None,
    };
    for (entry, answer) in batch.into_iter().zip(answers) {
        if !live.contains(entry.context_id) {
            sorted.fates.push(Fate::SettleLeases {
                check: entry.check,
                answer: answer.ok(),
            });
            continue;
        }
        match answer {
            Ok(answer) if entry.context_id == REFILL => sorted.fates.push(Fate::SettleLeases {
                check: entry.check,
                answer: Some(answer),
            }),
            Ok(answer) => sorted.fates.push(Fate::Decide {
                context_id: entry.context_id,
                check: entry.check,
                answer,
            }),
            Err(e) => {
                sorted.error.get_or_insert(e);
                sorted.failed.push(entry);
            }
        }
    }
    sorted
}

/// The entries of a callout that failed, sorted: the refills (their blocks carry on until they
/// run out) and the live requests, which get their rules' failure mode. Entries of requests
/// whose client left are dropped.
pub fn sort_failed(batch: Vec<Entry>, live: &Live) -> (Vec<Entry>, Vec<Entry>) {
    batch
        .into_iter()
        .filter(|entry| live.contains(entry.context_id))
        .partition(|entry| entry.context_id == REFILL)
}

#[cfg(test)]
mod tests {
    use protocol::HitResult;

    use super::*;
    use crate::verdict::Outcome;

    fn result(allowed: bool) -> HitResult {
        HitResult {
            allowed,
            limit: 10,
            remaining: 0,
            reset_ms: 1000,
            retry_after_ms: if allowed { 0 } else { 1000 },
            leased: 0,
            lease_ms: 0,
        }
    }

    /// A check of rules 0 (enforced), 1 (shadow) and 2 (enforced).
    fn check() -> Check {
        let mut hits: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .flat_map(|key| crate::batch::tests::check(key).hits)
            .collect();
        hits[1].shadow = true;
        Check {
            hits,
            rules: vec![0, 1, 2],
        }
    }

    fn entry(context_id: u32) -> Entry {
        Entry {
            context_id,
            check: check(),
            queued_ms: 0,
            retried: false,
        }
    }

    fn answer(allowed: [bool; 3]) -> CheckResponse {
        CheckResponse {
            allowed: allowed[0] && allowed[2],
            hits: allowed.iter().map(|&a| result(a)).collect(),
        }
    }

    fn allow() -> Decision {
        Decision::Allow {
            outcome: Outcome::Allowed,
            headers: Vec::new(),
        }
    }

    #[test]
    fn an_allowed_request_counts_its_enforced_rules_and_the_shadow_rules_that_would_deny() {
        let outcomes = rule_outcomes(&check(), &answer([true, false, true]), &allow());
        assert_eq!(
            outcomes,
            [
                (1, RuleOutcome::ShadowDenied),
                (0, RuleOutcome::Allowed),
                (2, RuleOutcome::Allowed)
            ]
        );
        let quiet = rule_outcomes(&check(), &answer([true, true, true]), &allow());
        assert_eq!(
            quiet,
            [(0, RuleOutcome::Allowed), (2, RuleOutcome::Allowed)]
        );
    }

    #[test]
    fn a_denied_request_counts_only_the_enforced_rules_that_denied_it() {
        let reply = crate::verdict::LocalReply {
            status: 429,
            kind: crate::verdict::ReplyKind::OverLimit,
            headers: Vec::new(),
            body: String::new(),
        };
        let outcomes = rule_outcomes(
            &check(),
            &answer([true, true, false]),
            &Decision::Reply(reply),
        );
        assert_eq!(outcomes, [(2, RuleOutcome::Denied)]);
    }

    #[test]
    fn answers_are_sorted_into_decisions_lease_settlements_and_failures() {
        let mut live = Live::default();
        live.created(1);
        live.created(3);
        let batch = vec![entry(1), entry(2), entry(REFILL), entry(3)];
        let answers = vec![
            Ok(answer([true, true, true])),
            Ok(answer([true, true, true])),
            Ok(answer([true, true, true])),
            Err(CalloutError::Body("no".into())),
        ];
        let sorted = sort_answers(batch, answers, &live);
        assert_eq!(
            sorted.fates,
            [
                Fate::Decide {
                    context_id: 1,
                    check: check(),
                    answer: answer([true, true, true])
                },
                // Request 2's client left: only its leases are settled.
                Fate::SettleLeases {
                    check: check(),
                    answer: Some(answer([true, true, true]))
                },
                Fate::SettleLeases {
                    check: check(),
                    answer: Some(answer([true, true, true]))
                },
            ]
        );
        assert_eq!(sorted.failed, [entry(3)]);
        assert_eq!(sorted.error, Some(CalloutError::Body("no".into())));
    }

    #[test]
    fn a_failed_callout_keeps_its_refills_apart_and_drops_requests_that_left() {
        let mut live = Live::default();
        live.created(1);
        let (refills, requests) = sort_failed(vec![entry(1), entry(2), entry(REFILL)], &live);
        assert_eq!(refills, [entry(REFILL)]);
        assert_eq!(requests, [entry(1)]);
    }
}
