//! The whole write path, over real HTTP against the sandbox and a real PostgreSQL:
//! field-only changes through `PUT /contacts/{id}` after a fresh `GET`, application-side
//! unsubscribes, list removals, deletes, `null` clears, unknown ops, the import fallback
//! above `put_max_rows`, and a subscriber's list leave placed at every point relative to a
//! row (before queueing, between queueing and the push's reads, between the reads and the
//! write) — with list leaves moving `updated_at` and not. No `touch()` of any contact.

use ccsync::sandbox::{SubscriberAction, Trigger};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::Harness;
use crate::push_reads::{harness, list_removed_logged, member, push, re_added, state};

fn requests(h: &Harness, method: &str, path_part: &str) -> Vec<ccsync::sandbox::RequestRecord> {
    h.sb.requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.contains(path_part))
        .collect()
}

/// Live (not deleted) contacts: (id, lower-case address, contact JSON).
fn live(h: &Harness) -> Vec<(Uuid, String, Value)> {
    h.ctl
        .contact_ids()
        .into_iter()
        .filter_map(|c| {
            let v = h.ctl.contact(c)?;
            let e = v["email_address"]["address"].as_str()?.to_lowercase();
            v["deleted_at"].is_null().then_some((c, e, v))
        })
        .collect()
}

fn imports(h: &Harness) -> usize {
    requests(h, "POST", "contacts_json_import").len()
}

/// A contact on at least one list, and a list it is not on.
async fn ready(h: &Harness) -> (Uuid, String, Uuid, Uuid) {
    h.run_ok(ccsync::sync::Job::Contacts).await;
    h.run_ok(ccsync::sync::Job::Lists).await;
    let (cid, email, on) = member(h);
    let off = *h
        .ctl
        .list_ids()
        .iter()
        .find(|l| !h.ctl.memberships(cid).contains(l))
        .expect("a list the contact is not on");
    (cid, email, on, off)
}

#[tokio::test]
async fn a_field_only_change_goes_out_by_put_without_a_list_and_keeps_the_rest() {
    let h = harness(30).await;
    let (cid, email, on, _) = ready(&h).await;
    let before = h.ctl.contact(cid).unwrap();
    let id = h.queue(&email, json!({"job_title": "Chief"}), &[]).await;
    let stats = push(&h).await;
    let (st, reason) = state(&h, id).await;
    assert_eq!(st, "completed", "{reason:?} {stats}");
    let after = h.ctl.contact(cid).unwrap();
    assert_eq!(after["job_title"], "Chief");
    // PUT overwrites every core field: the rest went back exactly as read.
    for k in [
        "first_name",
        "last_name",
        "company_name",
        "birthday_month",
        "anniversary",
    ] {
        assert_eq!(after[k], before[k], "{k} changed");
    }
    assert_eq!(
        after["email_address"]["permission_to_send"],
        before["email_address"]["permission_to_send"]
    );
    assert!(h.ctl.memberships(cid).contains(&on), "lists kept");
    assert_eq!(imports(&h), 0, "no import for a field-only change");
    let puts = requests(&h, "PUT", "/contacts/");
    assert_eq!(puts.len(), 1);
    let body = puts[0].body.as_ref().unwrap();
    assert!(body.get("list_memberships").is_none(), "{body}");
    assert_eq!(body["update_source"], "Account");
    assert_eq!(stats["put"]["reads"], 1, "{stats}");
    assert_eq!(stats["put"]["puts"], 1, "{stats}");
    // null clears.
    let id = h.queue(&email, json!({"job_title": null}), &[]).await;
    push(&h).await;
    assert_eq!(state(&h, id).await.0, "completed");
    assert!(h.ctl.contact(cid).unwrap()["job_title"].is_null());
    h.finish().await;
}

/// Defect 1 of the issue, at each point: the contact leaves list `on`, the application
/// queues a job-title change naming `on` (and a new list `off`); `on` must never come back.
async fn leave_at(point: &str, moves_updated_at: bool) {
    let h = harness(30).await;
    h.ctl.set_membership_moves_updated_at(moves_updated_at);
    let (cid, email, on, off) = ready(&h).await;
    let leave = SubscriberAction::LeaveList {
        contact_id: cid,
        list_id: on,
    };
    let id = match point {
        "before queueing" => {
            h.ctl.leave_list(cid, on);
            h.queue(&email, json!({"job_title": "T"}), &[on, off]).await
        }
        "before the reads" => {
            let id = h.queue(&email, json!({"job_title": "T"}), &[on, off]).await;
            h.ctl.leave_list(cid, on);
            id
        }
        "between the reads and the import" => {
            h.ctl.on_request(Trigger::new(
                "POST",
                "/v3/activities/contacts_json_import",
                leave,
            ));
            h.queue(&email, json!({"job_title": "T"}), &[on, off]).await
        }
        "between the read and the put" => {
            h.ctl
                .on_request(Trigger::new("PUT", "/v3/contacts/", leave));
            h.queue(&email, json!({"job_title": "T"}), &[on]).await
        }
        other => panic!("{other}"),
    };
    let stats = push(&h).await;
    // A second cycle (the leave is now in the store either way) changes nothing.
    push(&h).await;
    let label = format!("{point}, leaves move updated_at: {moves_updated_at}");
    let now = h.ctl.memberships(cid);
    assert!(
        !now.contains(&on),
        "{label}: the leave was undone ({stats})"
    );
    assert!(
        !re_added(&h, &email, on),
        "{label}: an import named the list it left"
    );
    if point != "between the read and the put" {
        assert!(now.contains(&off), "{label}: the new join was not made");
    }
    let (st, reason) = state(&h, id).await;
    assert!(
        matches!(st.as_str(), "completed" | "skipped"),
        "{label}: {st} {reason:?}"
    );
    assert_eq!(h.ctl.contact(cid).unwrap()["job_title"], "T", "{label}");
    // Whatever the point, ccsync learns the leave and logs it (the guard's signal).
    push(&h).await;
    assert!(list_removed_logged(&h, cid, on).await, "{label}");
    assert!(h.ctl.resubscriptions().is_empty());
    h.finish().await;
}

#[tokio::test]
async fn a_list_leave_at_any_point_is_never_undone_when_leaves_move_no_clock() {
    for point in [
        "before queueing",
        "before the reads",
        "between the reads and the import",
        "between the read and the put",
    ] {
        leave_at(point, false).await;
    }
}

#[tokio::test]
async fn a_list_leave_at_any_point_is_never_undone_when_leaves_move_updated_at() {
    for point in [
        "before queueing",
        "before the reads",
        "between the reads and the import",
        "between the read and the put",
    ] {
        leave_at(point, true).await;
    }
}

#[tokio::test]
async fn an_application_side_unsubscribe_is_a_put_and_skips_pending_list_adds() {
    let h = harness(30).await;
    let (cid, email, _, off) = ready(&h).await;
    let before = h.ctl.contact(cid).unwrap();
    let unsub = h
        .queue_op(
            &email,
            "unsubscribe",
            json!({"opt_out_reason": "asked by phone"}),
            &[],
        )
        .await;
    let stats = push(&h).await;
    let (st, reason) = state(&h, unsub).await;
    assert_eq!(st, "completed", "{reason:?} {stats}");
    let c = h.ctl.contact(cid).unwrap();
    assert_eq!(c["email_address"]["permission_to_send"], "unsubscribed");
    assert_eq!(c["email_address"]["opt_out_source"], "Contact");
    assert_eq!(c["email_address"]["opt_out_reason"], "asked by phone");
    assert_eq!(c["first_name"], before["first_name"], "the rest kept");
    let put = &requests(&h, "PUT", "/contacts/")[0];
    assert_eq!(put.body.as_ref().unwrap()["update_source"], "Contact");
    // The store knows at once; a row adding a list afterwards is skipped, never sent.
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.contacts WHERE contact_id = '{cid}' \
             AND permission_to_send = 'unsubscribed'"
        ))
        .await,
        1
    );
    let add = h.queue(&email, json!({}), &[off]).await;
    push(&h).await;
    assert_eq!(state(&h, add).await.0, "skipped");
    assert!(!re_added(&h, &email, off));
    assert!(h.ctl.resubscriptions().is_empty());
    // Unsubscribing again is already done: no second PUT.
    let again = h.queue_op(&email, "unsubscribe", json!({}), &[]).await;
    push(&h).await;
    assert_eq!(state(&h, again).await.0, "completed");
    assert_eq!(requests(&h, "PUT", "/contacts/").len(), 1);
    h.finish().await;
}

#[tokio::test]
async fn remove_from_lists_and_delete_are_activities_confirmed_by_reading() {
    let h = harness(30).await;
    let (cid, email, on, _) = ready(&h).await;
    // A second member to delete.
    let (did, demail, _) = live(&h).into_iter().find(|(c, _, _)| *c != cid).unwrap();
    let kept: Vec<Uuid> = h
        .ctl
        .memberships(cid)
        .into_iter()
        .filter(|l| *l != on)
        .collect();
    let rm = h
        .queue_op(&email, "remove_from_lists", json!({}), &[on])
        .await;
    let del = h.queue_op(&demail, "delete", json!({}), &[]).await;
    let bogus = h.queue_op(&email, "frobnicate", json!({}), &[]).await;
    let stats = push(&h).await;
    for id in [rm, del] {
        let (st, reason) = state(&h, id).await;
        assert_eq!(st, "completed", "{reason:?} {stats}");
    }
    let now = h.ctl.memberships(cid);
    assert!(!now.contains(&on));
    for l in kept {
        assert!(now.contains(&l), "only the named list is removed");
    }
    assert!(!h.ctl.contact(did).unwrap()["deleted_at"].is_null());
    assert_eq!(stats["removals_submitted"], 1, "{stats}");
    assert_eq!(stats["deletes_submitted"], 1, "{stats}");
    let (st, reason) = state(&h, bogus).await;
    assert_eq!(st, "failed");
    assert!(reason.unwrap().contains("\"frobnicate\""));
    // The store follows.
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.list_memberships WHERE contact_id = '{cid}' AND list_id = '{on}'"
        ))
        .await,
        0
    );
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM ccsync.contacts WHERE contact_id = '{did}' AND deleted_at IS NOT NULL"
        ))
        .await,
        1
    );
    h.finish().await;
}

#[tokio::test]
async fn a_contact_deleted_before_the_put_is_skipped_never_revived() {
    let h = harness(30).await;
    let (cid, email, _, _) = ready(&h).await;
    let id = h.queue(&email, json!({"job_title": "Ghost"}), &[]).await;
    // Deleted in Constant Contact after the store's pull, right before the write's read.
    h.ctl.on_request(Trigger::new(
        "GET",
        &format!("/v3/contacts/{cid}"),
        SubscriberAction::Delete { contact_id: cid },
    ));
    push(&h).await;
    let (st, reason) = state(&h, id).await;
    assert_eq!(st, "skipped", "{reason:?}");
    assert!(reason.unwrap().contains("revive"));
    assert!(h.ctl.revivals().is_empty());
    assert!(requests(&h, "PUT", "/contacts/").is_empty());
    h.finish().await;
}

#[tokio::test]
async fn a_row_counted_as_correctable_without_a_name_ends_failed_naming_the_counter() {
    let h = harness(20).await;
    let lists = h.ctl.list_ids();
    h.ctl.refuse_as_correctable("fixable@example.com");
    let id = h
        .queue(
            "fixable@example.com",
            json!({"first_name": "F"}),
            &lists[..1],
        )
        .await;
    push(&h).await;
    let (st, reason) = state(&h, id).await;
    assert_eq!(st, "failed", "{reason:?}");
    assert!(reason.unwrap().contains("correctable_count=1"));
    h.finish().await;
}

#[tokio::test]
async fn above_put_max_rows_field_changes_fall_back_to_an_import_of_lists_the_contact_is_on() {
    let h = Harness::with(40, |s| {
        s.sync.poll_initial = std::time::Duration::from_millis(20);
        s.sync.poll_max = std::time::Duration::from_millis(80);
        s.sync.put_max_rows = 1;
    })
    .await;
    h.run_ok(ccsync::sync::Job::Contacts).await;
    h.run_ok(ccsync::sync::Job::Lists).await;
    let members: Vec<(Uuid, String, Vec<Uuid>)> = live(&h)
        .into_iter()
        .filter(|(_, _, v)| v["email_address"]["permission_to_send"] != "unsubscribed")
        .map(|(c, e, _)| (c, e, h.ctl.memberships(c)))
        .filter(|(_, _, on)| !on.is_empty())
        .take(3)
        .collect();
    assert_eq!(members.len(), 3);
    let mut ids = Vec::new();
    for (_, e, _) in &members {
        ids.push(
            h.queue(e, json!({"company_name": "Fallback Inc"}), &[])
                .await,
        );
    }
    let stats = push(&h).await;
    assert_eq!(stats["put"]["puts"], 1, "{stats}");
    assert_eq!(stats["fallback_rows"], 2, "{stats}");
    assert!(stats["fallback_read_to_submit_ms"].is_u64(), "{stats}");
    for id in ids {
        assert_eq!(state(&h, id).await.0, "completed");
    }
    for (c, _, on) in &members {
        assert_eq!(h.ctl.contact(*c).unwrap()["company_name"], "Fallback Inc");
        let mut now = h.ctl.memberships(*c);
        let mut was = on.clone();
        now.sort();
        was.sort();
        assert_eq!(now, was, "the fallback import changed no membership");
    }
    h.finish().await;
}

/// A tiny deterministic generator (the scenarios must be reproducible from their seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Random interleavings of subscriber actions (leave, unsubscribe, re-join on the Constant
/// Contact side) and application rows of every op, with pushes in between, leaves moving
/// `updated_at` or not. After every push: no contact is on a list it left since its last
/// re-join; nobody was re-subscribed; and at the end every row is terminal, with a reason
/// where not completed, and each field's last completed value is in Constant Contact.
#[tokio::test]
async fn random_interleavings_keep_the_laws() {
    let seeds: u64 = std::env::var("CCSYNC_INTERLEAVINGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for seed in 1..=seeds {
        interleaving(seed).await;
    }
}

async fn interleaving(seed: u64) {
    let h = harness(12).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    h.ctl.set_membership_moves_updated_at(rng.next(2) == 0);
    h.run_ok(ccsync::sync::Job::Contacts).await;
    h.run_ok(ccsync::sync::Job::Lists).await;
    let lists = h.ctl.list_ids();
    let contacts: Vec<(Uuid, String)> = live(&h)
        .into_iter()
        .map(|(c, e, _)| (c, e))
        .take(4)
        .collect();
    // (contact, list) pairs the subscriber left and has not re-joined since.
    let mut left: std::collections::HashSet<(Uuid, Uuid)> = Default::default();
    // Leaves installed as triggers: they count once they fired.
    let mut armed: Vec<(ccsync::sandbox::TriggerId, Uuid, Uuid)> = Vec::new();
    let fired = |armed: &mut Vec<(ccsync::sandbox::TriggerId, Uuid, Uuid)>,
                 left: &mut std::collections::HashSet<(Uuid, Uuid)>| {
        armed.retain(|(t, c, l)| {
            if h.ctl.trigger_fired(*t) {
                left.insert((*c, *l));
                false
            } else {
                true
            }
        });
    };
    let titles = ["A", "B", "C", "D"];
    for step in 0..14 {
        let (c, email) = &contacts[rng.next(contacts.len() as u64) as usize];
        let l = lists[rng.next(lists.len() as u64) as usize];
        match rng.next(9) {
            0 | 1 => {
                if h.ctl.memberships(*c).contains(&l) {
                    h.ctl.leave_list(*c, l);
                    left.insert((*c, l));
                }
            }
            2 => {
                fired(&mut armed, &mut left);
                h.ctl.join_list(*c, l);
                left.remove(&(*c, l));
            }
            3 => h.ctl.unsubscribe(*c, Some("random")),
            4 => {
                let t = titles[rng.next(4) as usize];
                h.queue(email, json!({"job_title": t}), &[l]).await;
            }
            5 => {
                let t = titles[rng.next(4) as usize];
                h.queue(email, json!({"job_title": t}), &[]).await;
            }
            6 => {
                h.queue_op(email, "remove_from_lists", json!({}), &[l])
                    .await;
            }
            7 => {
                h.queue_op(email, "unsubscribe", json!({}), &[]).await;
            }
            _ => {
                // The leave lands exactly between the push's reads and its write.
                if h.ctl.memberships(*c).contains(&l) {
                    let path = if rng.next(2) == 0 {
                        "/v3/activities/contacts_json_import"
                    } else {
                        "/v3/contacts/"
                    };
                    let method = if path.contains("activities") {
                        "POST"
                    } else {
                        "PUT"
                    };
                    let t = h.ctl.on_request(Trigger::new(
                        method,
                        path,
                        SubscriberAction::LeaveList {
                            contact_id: *c,
                            list_id: l,
                        },
                    ));
                    armed.push((t, *c, l));
                }
                h.queue(email, json!({"job_title": "E"}), &[l]).await;
            }
        }
        if step % 3 == 2 {
            push(&h).await;
            fired(&mut armed, &mut left);
            for (c, l) in &left {
                assert!(
                    !h.ctl.memberships(*c).contains(l),
                    "seed {seed} step {step}: {c} is back on {l}, a list it left"
                );
            }
        }
    }
    // Quiet: two more cycles end every row.
    push(&h).await;
    push(&h).await;
    fired(&mut armed, &mut left);
    for (c, l) in &left {
        assert!(
            !h.ctl.memberships(*c).contains(l),
            "seed {seed}: {c} back on {l}"
        );
    }
    assert!(
        h.ctl.resubscriptions().is_empty(),
        "seed {seed}: a re-subscription"
    );
    let rows: Vec<(i64, String, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT id, lower(email), state, reason, fields FROM ccsync.outbound ORDER BY id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let mut last_title: std::collections::HashMap<String, String> = Default::default();
    for (id, email, st, reason, fields) in &rows {
        assert!(
            matches!(st.as_str(), "completed" | "skipped" | "failed"),
            "seed {seed}: row {id} is {st} ({reason:?})"
        );
        if st != "completed" {
            assert!(
                reason.is_some(),
                "seed {seed}: row {id} {st} without a reason"
            );
        } else if let Some(t) = fields.get("job_title").and_then(Value::as_str) {
            last_title.insert(email.clone(), t.to_string());
        }
    }
    for (c, email) in &contacts {
        if let Some(t) = last_title.get(email) {
            let conflicts = h
                .count(&format!(
                    "SELECT count(*) FROM ccsync.changes WHERE kind = 'conflict' AND email = '{email}'"
                ))
                .await;
            if conflicts == 0 {
                assert_eq!(
                    h.ctl.contact(*c).unwrap()["job_title"],
                    json!(t),
                    "seed {seed}: the last completed title of {email} is not in Constant Contact"
                );
            }
        }
    }
    h.finish().await;
}
