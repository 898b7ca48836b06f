//! The contacts pull (issue: foundation).

use ccsync::sync::Job;

use crate::helpers::Harness;

#[tokio::test]
async fn initial_pull_mirrors_every_contact_across_pages_with_memberships() {
    let h = Harness::new(1_200).await;
    let stats = h.run_ok(Job::Contacts).await;
    assert_eq!(stats["pages"], 3, "{stats}");
    assert_eq!(stats["created"], 1_200);
    let stored = h.count("SELECT count(*) FROM ccsync.contacts").await;
    assert_eq!(stored, 1_200);
    let sandbox_memberships: usize = h.ctl.contact_ids().iter().map(|id| h.ctl.memberships(*id).len()).sum();
    let local = h.count("SELECT count(*) FROM ccsync.list_memberships").await;
    assert_eq!(local as usize, sandbox_memberships);
    assert!(local > 0);
    h.finish().await;
}
