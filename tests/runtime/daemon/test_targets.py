

def test_a_runsc_pod_unit_is_reached_through_its_first_app_container() -> None:
    from architect.engine.telemetry import ContainerKey, ContainerState
    from architect.runtime.daemon.targets import (
        annotated_states,
        build_target,
        status_annotation,
    )

    pod = {
        "metadata": {"name": "gv", "namespace": "d", "uid": "u1"},
        "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 8080}]},
            {"name": "side", "ports": [{"containerPort": 53, "protocol": "UDP"}]},
        ]},
        "status": {"containerStatuses": [
            {"name": "side", "containerID": "containerd://s1"},
            {"name": "app", "containerID": "containerd://a1"},
        ]},
    }
    t = build_target(pod, ContainerKey("d", "gv", ""), None)
    assert (t.container_id, t.mode, t.tcp_ports, t.udp_ports) == ("a1", "none", (8080,), (53,))
    assert t.requests == ()  # no resize of a pod unit
    value = status_annotation({"": ContainerState.SCALED_DOWN})
    assert value == '{"pod":"SCALED_DOWN"}'
    ann = {"architect.loopholelabs.io/status": value}
    assert annotated_states({"metadata": {"annotations": ann}})[""] is ContainerState.SCALED_DOWN
