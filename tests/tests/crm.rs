//! CRM upserts against a loopback peer that answers like Salesforce and
//! HubSpot, with OAuth client credentials issued by the same peer.

use freshet_tests::*;

fn cancelled(ids: std::ops::Range<i64>) -> Vec<Order> {
    let base = now_ms() - 60_000;
    ids.map(|id| Order::new(id, "cancelled", base + id))
        .collect()
}

fn oauth(receiver: &Receiver) -> String {
    std::env::set_var("FRESHET_TEST_CRM_ID", "crm-client");
    std::env::set_var("FRESHET_TEST_CRM_SECRET", "crm-secret");
    receiver.require_ims("crm-client", "crm-secret", 3600);
    format!(
        "oauth = {{ token_url = \"{}/ims/token/v3\", client_id_env = \"FRESHET_TEST_CRM_ID\", client_secret_env = \"FRESHET_TEST_CRM_SECRET\" }}",
        receiver.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_upserts_by_external_id_with_one_cached_token() {
    let receiver = Receiver::start(true).await.unwrap();
    let crm = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.targets.insert(
        "crm",
        crm_target("salesforce", &crm.url(), "Email__c", &oauth(&crm)),
    );
    let mut orders = cancelled(1..5);
    orders[3].email = orders[0].email.clone(); // a second upsert of one contact
    setup.insert(&orders);
    setup.run_once(&receiver).await.unwrap();

    // Actions run concurrently: in order id order.
    let mut calls = crm.crm_calls();
    calls.sort_by_key(|c| {
        c.fields["last_order_id"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    });
    assert_eq!(calls.len(), 4, "{:?}", setup.dead_letters());
    for (call, order) in calls.iter().zip(&orders) {
        assert_eq!(call.flavor, "salesforce");
        assert_eq!(
            (call.object.as_str(), call.id_field.as_str()),
            ("Contact", "Email__c")
        );
        assert_eq!(call.id, order.email);
        assert_eq!(call.fields["last_order_id"], order.id.to_string());
        assert_eq!(call.fields["last_order_status"], "cancelled");
        assert!(call
            .idempotency_key
            .as_deref()
            .unwrap()
            .starts_with("orders/"));
    }
    let contact = |id: &str| {
        calls
            .iter()
            .filter(|c| c.id == id)
            .map(|c| c.created)
            .collect::<Vec<_>>()
    };
    let mut first = contact(&orders[0].email);
    first.sort();
    assert_eq!(first, [false, true], "one contact created, then updated");
    assert_eq!(crm.tokens_issued(), 1, "the token is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_batch_upsert_and_a_refused_token_renewed_once() {
    let receiver = Receiver::start(true).await.unwrap();
    let crm = Receiver::start(true).await.unwrap();
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.targets.insert(
        "crm",
        crm_target("hubspot", &crm.url(), "email", &oauth(&crm)),
    );
    setup.insert(&cancelled(1..3));
    // The first call finds its token revoked.
    crm.script_crm(Scripted::Status {
        status: 401,
        retry_after: None,
    });
    setup.run_once(&receiver).await.unwrap();

    let mut calls = crm.crm_calls();
    calls.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(calls.len(), 2, "{:?}", setup.dead_letters());
    assert_eq!(calls[0].flavor, "hubspot");
    assert_eq!(calls[0].id_field, "email");
    assert_eq!(calls[0].id, "c1@example.com");
    assert_eq!(calls[0].fields["last_order_status"], "cancelled");
    assert_eq!(crm.tokens_issued(), 2, "renewed after the 401");
    assert!(setup.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_a_404_dead_lettered() {
    let receiver = Receiver::start(true).await.unwrap();
    let crm = Receiver::start(true).await.unwrap();
    std::env::set_var("FRESHET_TEST_CRM_TOKEN", "fixed");
    let mut setup = Setup::new(plugins::ORDERS_PLUGIN);
    setup.targets.insert(
        "crm",
        crm_target(
            "salesforce",
            &crm.url(),
            "Email__c",
            "token_env = \"FRESHET_TEST_CRM_TOKEN\"",
        ),
    );
    setup.insert(&cancelled(1..2));
    crm.script_crm(Scripted::Status {
        status: 503,
        retry_after: Some(0),
    });
    setup.run_once(&receiver).await.unwrap();
    assert_eq!(crm.crm_calls().len(), 1, "retried after the 503");

    setup.insert(&cancelled(2..3));
    crm.script_crm(Scripted::Status {
        status: 404,
        retry_after: None,
    });
    crm.script_crm(Scripted::Status {
        status: 200,
        retry_after: None,
    });
    setup.run_once(&receiver).await.unwrap();
    assert_eq!(crm.crm_calls().len(), 1, "404 is not retried");
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, "http_404");
}
