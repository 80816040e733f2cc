"""What the cluster's programs log reaches the log server under their own
program name: RabbitMQ, authentication, each Celery pool and beat."""
from clusterlib import amqp_session, group, host, wait_until
from logcheck import SERVER, WORKER, remote_text, wait_for_text


def test_rabbitmq_lines_arrive_in_rabbitmq_log():
    broker = group("rabbitmq")[0]
    # An AMQP session makes RabbitMQ log the connection and the user.
    result = amqp_session(WORKER, "celery_worker", [], broker)
    assert result["ok"], result
    text = wait_for_text(broker, "rabbitmq", "celery_worker")
    assert "celery_worker" in text, f"no RabbitMQ line about the session in {broker}/rabbitmq.log"


def test_authentication_lines_arrive():
    # runuser goes through PAM, which logs the session to authpriv.
    host(WORKER).check_output("runuser -u nobody -- true")
    text = wait_for_text(WORKER, "runuser", "session opened for user nobody")
    assert "session opened for user nobody" in text


def test_each_celery_pool_logs_to_its_own_file():
    worker = host(WORKER)
    pools = [unit.split("@", 1)[1].removesuffix(".service") for unit in worker.check_output(
        "systemctl list-units --plain --no-legend --type=service 'celery-worker@*' | awk '{print $1}'").split()]
    assert pools, "no worker pool runs"
    for pool in pools:
        program = f"celery-worker-{pool}"
        before = remote_text(WORKER, program).count(" ready.")
        worker.check_output("systemctl restart %s", f"celery-worker@{pool}.service")
        text = wait_until(lambda: remote_text(WORKER, program), 90, done=lambda text: text.count(" ready.") > before)
        assert text.count(" ready.") > before, f"{program}.log did not get the pool's start-up line"


def test_beat_logs_to_its_own_file():
    beat = group("celery_beat")[0]
    assert host(SERVER).file(f"/var/log/remote/{beat}/celery-beat.log").exists
    assert "beat" in remote_text(beat, "celery-beat").lower()
