"""cluster.yaml validates against Ray's own cluster schema and declares its GPU workers as the autoscaler needs."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does first: raises on a schema violation
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["max_workers"] > 0  # what gpus_per_task: auto scales up for


def test_pipeline_reads_the_gpu_node_types_as_the_autoscaler_does(tmp_path):
    """The head-side reader (`cluster._head_node_types`' parsing) of cluster.yaml's node types."""
    from pipeline.cluster import describe_node_types, gpu_node_types

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = config["head_node_type"]
    types = {
        name: {
            "resources": node.get("resources") or {},
            "min_workers": node.get("min_workers", 0),
            "max_workers": 0 if name == head else node.get("max_workers", config["max_workers"]),
        }
        for name, node in config["available_node_types"].items()
    }
    assert list(gpu_node_types(types)) == ["gpu_worker"]
    assert "gpu_worker (CPU 4, GPU 1; 0 to 8 workers)" in describe_node_types(types)
