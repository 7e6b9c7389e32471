"""The streams page (``plugins/event_streams_page.py``) in headless Chromium on the real native stack, signed in.

Traffic like ``make demo``'s plus poison messages and a delivery whose file was cut short; the page must show every
pipeline's figures and the dead letters. The cut file is then fixed, its dead letter replayed from the page, and the
delivery's orders must be in the sink exactly once (a second replay changes nothing). A consumer-group offset reset
behind Airflow's back must show as drift. Signed-out requests are refused, and a viewer may look but not replay.

Debian's ``chromium`` and ``chromium-driver`` drive it (``make test-ui``; CI installs them). The screenshot is kept
in ``.devstack/ui/streams-page.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from devstack import publish
from devstack.testing import ROOT, Stack
from event_streams.pipelines.samples_api import PRODUCER
from include.data_delivery_etl.pipeline import render_csv
from include.data_delivery_etl.samples import order_row
from include.data_delivery_etl.schemas import DeliveryNotice

STACK_ENV = {"DEVSTACK_AUTH": "passwords"}  # sign-in required: users admin and viewer
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = ROOT / ".devstack" / "ui" / "streams-page.png"


def _call(stack: Stack, path: str, token: str | None = None, method: str = "GET",
          body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{stack.info['AIRFLOW__API__PORT']}{path}", method=method,
                                 data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _token(stack: Stack, user: str) -> str:
    passwords = json.loads((Path(stack.info["AIRFLOW_HOME"]) / "passwords.json").read_text())
    status, body = _call(stack, "/auth/token", method="POST", body={"username": user, "password": passwords[user]})
    assert status == 201 or status == 200, body
    return body["access_token"]


def _wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _cut_delivery(stack: Stack, delivery_id: str) -> tuple[Path, bytes]:
    """A notice for a file whose upload broke off half way (dead-lettered: checksum mismatch, file left in place);
    returns the file and its whole content, for the producer's fix."""
    landing = Path(stack.info["LANDING_DIR"])
    rng = random.Random(delivery_id)
    orders = [order_row(rng, f"o-{delivery_id}-{j}", datetime.now(timezone.utc)) for j in range(4)]
    data = render_csv(orders)
    path = landing / f"{delivery_id}.csv"
    path.write_bytes(data[: len(data) // 2])
    notice = DeliveryNotice(delivery_id=delivery_id, uri=path.as_uri(), sha256=hashlib.sha256(data).hexdigest(),
                            row_count=len(orders), producer=PRODUCER, delivered_at=datetime.now(timezone.utc))
    stack.sqs().send_message(QueueUrl=f"{stack.info['SQS_QUEUE_URL_PREFIX']}/data-deliveries",
                             MessageBody=notice.model_dump_json())
    return path, data


def _browser(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1600"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_the_streams_page_shows_replays_and_reports_drift(stack: Stack, tmp_path: Path, report_line) -> None:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        reason = "Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    from selenium.webdriver.common.by import By

    # --- signed out, and a viewer ---
    assert _call(stack, "/event-streams/api/streams")[0] == 401
    assert _call(stack, "/event-streams/")[0] == 401
    admin, viewer = _token(stack, "admin"), _token(stack, "viewer")
    status, plugins = _call(stack, "/api/v2/plugins", admin)
    [page_plugin] = [p for p in plugins["plugins"] if p["name"] == "event_streams_page"]
    assert {v["destination"] for v in page_plugin["external_views"]} == {"nav", "dag"}

    # --- traffic: good messages of every pipeline, poison, and a delivery cut short ---
    landing = Path(stack.info["LANDING_DIR"])
    records = (publish.publish("iot", 6, devices=2, run_id="uiiot", bootstrap=stack.bootstrap)
               + publish.publish("iot", run_id="uiiotp", poison=True, bootstrap=stack.bootstrap))
    for pipeline in ("iot",):
        assert stack.collect([r for r in records if r["pipeline"] == pipeline]).ok
    sqs_records = (publish.publish("inference", 5, run_id="uiinf", target=stack.target)
                   + publish.publish("inference", run_id="uiinfp", poison=True, target=stack.target)
                   + publish.publish("etl", 2, rows=3, run_id="uietl", target=stack.target, landing_dir=landing))
    for pipeline in ("inference", "etl"):
        assert stack.collect([r for r in sqs_records if r["pipeline"] == pipeline]).ok
    cut_file, whole = _cut_delivery(stack, "d-uicut")
    events = create_engine(stack.events_url)

    def cut_letter() -> str | None:
        with events.connect() as conn:
            return conn.execute(text("SELECT message_id FROM dead_letters WHERE pipeline = 'data_delivery_etl'"
                                     " AND body LIKE '%d-uicut%'")).scalar()

    message_id = _wait("the cut delivery's dead letter", cut_letter)
    assert _call(stack, f"/event-streams/api/dead-letters/data_delivery_etl/{message_id}/replay", viewer,
                 "POST")[0] == 403
    assert _call(stack, "/event-streams/api/streams", viewer)[0] == 200  # a viewer may look

    # --- the page, signed in as admin ---
    browser = _browser(tmp_path)
    try:
        base = f"http://127.0.0.1:{stack.info['AIRFLOW__API__PORT']}"
        browser.get(f"{base}/event-streams/")
        browser.add_cookie({"name": "_token", "value": admin, "path": "/"})
        browser.get(f"{base}/event-streams/")
        _wait("three sections", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".section")) == 3, 60)
        row = _wait("the cut delivery's row",
                    lambda: browser.find_elements(By.CSS_SELECTOR, f"tr[data-message-id='{message_id}']"), 60)[0]
        sections = {s.get_attribute("data-dag-id"): s.text for s in browser.find_elements(By.CSS_SELECTOR, ".section")}
        assert set(sections) == {"iot_alerting", "data_delivery_etl", "inference_execution"}
        for dag_id, shown in sections.items():
            assert "broker" in shown and "unreachable" not in shown and "drift" in shown, (dag_id, shown)
            assert "message age p50" in shown, (dag_id, shown)
        letters = browser.find_element(By.ID, "letters").text
        assert "checksum mismatch" in letters and letters.count("\n") >= 1 + 3  # header, the cut file, poison
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))

        # --- the producer fixes the file; replay it from the page ---
        cut_file.write_bytes(whole)
        row.find_element(By.CSS_SELECTOR, "button.replay").click()
        done = _wait("the replay's answer", lambda: row.find_element(By.CSS_SELECTOR, ".done").text, 60)
        assert done.startswith("replayed by admin (run manual__"), done

        def loaded() -> int:
            with events.connect() as conn:
                return int(conn.execute(text("SELECT COUNT(*) FROM orders WHERE order_id LIKE 'o-d-uicut-%'")).scalar())

        assert _wait("the replayed delivery's orders", loaded, 120) == 4
        status, again = _call(stack, f"/event-streams/api/dead-letters/data_delivery_etl/{message_id}/replay", admin,
                              "POST")
        assert status == 200 and again["new"] is False
        time.sleep(5)
        assert loaded() == 4, "the delivery's orders are in the sink exactly once"

        # --- an offset reset behind Airflow's back ---
        from confluent_kafka import Consumer, TopicPartition

        offsets = stack.kafka_offsets("iot-readings")
        partition = max(offsets, key=lambda p: offsets[p][0])
        assert offsets[partition][0] > 0
        consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "airflow.iot_alerting",
                             "enable.auto.commit": False})
        consumer.commit(offsets=[TopicPartition("iot-readings", partition, 0)], asynchronous=False)
        consumer.close()
        browser.get(f"{base}/event-streams/?dag_id=iot_alerting")
        iot = _wait("the IoT section", lambda: browser.find_elements(By.CSS_SELECTOR, ".section"), 60)[0]
        assert "drift: The broker's committed offset is behind what the runs settled" in iot.text, iot.text
        assert f"iot-readings[{partition}]: committed 0, settled through {offsets[partition][0]}" in iot.text
        browser.save_screenshot(str(SCREENSHOT.with_name("streams-page-drift.png")))
    finally:
        browser.quit()
    report_line(f"streams page: 3 pipelines shown, dead letter {message_id} replayed once (4 orders), drift on "
                f"iot-readings[{partition}] reported; screenshots in {SCREENSHOT.parent}")
