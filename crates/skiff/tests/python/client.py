"""The official Python `kubernetes` client against a running skiff server.

Usage: client.py KUBECONFIG. Exits non-zero (with a traceback) on the first failure.
"""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()

    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system"} <= names, names

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="conf", labels={"app": "py"}), data={"k": "v1"})
    created = core.create_namespaced_config_map("py", cm)
    assert created.metadata.uid and created.metadata.resource_version
    rv = created.metadata.resource_version

    read = core.read_namespaced_config_map("conf", "py")
    assert read.data == {"k": "v1"}

    # Merge patch (the client's default for a dict body).
    patched = core.patch_namespaced_config_map("conf", "py", {"data": {"k": "v2"}})
    assert patched.data["k"] == "v2"
    assert int(patched.metadata.resource_version) > int(rv)

    # Optimistic concurrency: a replace with the stale resourceVersion is a 409.
    stale = read
    stale.data = {"k": "lost"}
    try:
        core.replace_namespaced_config_map("conf", "py", stale)
        raise AssertionError("a stale replace must conflict")
    except ApiException as e:
        assert e.status == 409, e
        assert "the object has been modified" in e.body, e.body

    # Fresh read, then replace succeeds.
    fresh = core.read_namespaced_config_map("conf", "py")
    fresh.data = {"k": "v3"}
    replaced = core.replace_namespaced_config_map("conf", "py", fresh)
    assert replaced.data["k"] == "v3"

    # Label selectors and pagination.
    for i in range(5):
        core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i}", labels={"page": "yes"})))
    page = core.list_namespaced_config_map("py", label_selector="page=yes", limit=2)
    seen = [i.metadata.name for i in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_config_map("py", label_selector="page=yes", limit=2, _continue=page.metadata._continue)
        seen += [i.metadata.name for i in page.items]
    assert seen == [f"page-{i}" for i in range(5)], seen

    # Watch from a resourceVersion: replays what happened after it, then follows.
    events = []
    w = watch.Watch()

    def follow():
        for event in w.stream(core.list_namespaced_config_map, "py", resource_version=replaced.metadata.resource_version,
                              field_selector="metadata.name=conf", timeout_seconds=20):
            events.append((event["type"], event["object"].data))
            if len(events) == 2:
                w.stop()

    core.patch_namespaced_config_map("conf", "py", {"data": {"k": "v4"}})
    thread = threading.Thread(target=follow)
    thread.start()
    core.delete_namespaced_config_map("conf", "py")
    thread.join(30)
    assert events == [("MODIFIED", {"k": "v4"}), ("DELETED", {"k": "v4"})], events

    try:
        core.read_namespaced_config_map("conf", "py")
        raise AssertionError("deleted")
    except ApiException as e:
        assert e.status == 404 and e.reason == "Not Found", e
    print("python client: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
