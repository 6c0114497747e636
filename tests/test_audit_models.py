"""The audit on real third-party models built from tiny configs: transformers' causal LMs (their loss
casts the logits with ``.float()``, eager attention runs softmax in float32), with and without
gradient checkpointing, correct and with a planted wrong projection."""
import warnings

import pytest
import torch

import torchbp
from thirdparty import transformers as _transformers

transformers = _transformers()


def _tiny(name):
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                            attn_implementation="eager")
        return GPT2LMHeadModel(config)
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                         attn_implementation="eager")
    return LlamaForCausalLM(config)


def _loss(out, _):
    return out.loss


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causal_lm_float64_audit(name, checkpointing):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _tiny(name).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = torchbp.audit(model, batch, loss_fn=_loss)
    assert r.ok and r.worst_rel_err <= 1e-10, str(r)
    assert "Tensor.float" in r.environment["float64_upgraded"]  # the loss's cast, upgraded on both sides
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def test_llama_wrong_q_projection_is_named():
    from planted import WrongLinear
    torch.manual_seed(0)
    model = _tiny("llama").train()
    q = model.model.layers[1].self_attn.q_proj
    q.__class__ = WrongLinear  # natively a Linear; its twin's δ to the input is 1.5× too large
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = torchbp.audit(model, {"input_ids": ids, "labels": ids}, loss_fn=_loss)
    assert not r.ok and r.first_divergence == "model.layers.1.self_attn.q_proj", str(r)
    status = {(row.layer, row.quantity): row.status for row in r.rows}
    assert status[("model.layers.1.self_attn.k_proj", "grad_input")] == "ok"
