"""Hand-made run records for tests that render or export them."""


def verdict_record() -> dict:
    return {
        "schema": 1,
        "run_id": "261124-022122-diagnose-8d95",
        "phase": "gate",
        "status": "completed",
        "verdict": "SPATIAL_SHORTCUT",
        "reasons": ["noise-trained model 38.1 > 0.7 x real-trained 40.2"],
        "evidence": {
            "prior": 31.9,
            "majority": 12.0,
            "real": 40.2,
            "real_on_noise": 33.0,
            "shuffled": 30.1,
            "noise_trained": 38.1,
            "tier1": 34.0,
            "notes": [],
        },
        "steps": {
            k: f"261124-0221{i:02d}-diagnose-{k[:4]}"
            for i, k in enumerate(["prior", "baseline", "shuffled", "noise", "tier1"])
        },
        "gate": {"preset": "seed", "decision": "2A", "why": "tier-1 mIoU 34.0 in [30, 35]", "next_checks": []},
    }
