"""Case 4, ``RoboVLMsCompleteModel``: a history window, a large resampler and a hierarchical planner.

    history_tokens (B, W, N, Dtok) --resampler per frame--> frames (B, W, h) + time embedding
    text (B, Dt) --proj--> (B, 1, h)
    [text, frames] --temporal self-attention (padding masked)--> memory (B, 1+W, h); context = current frame
    task planner:     context -> task_logits (B, T); plan queries + context + task embedding
                      --cross-attend memory--> plan (B, P, h) (sub-goal embeddings)
    state predictor:  vision (B, Dv) --state encoder--> s_t (B, S); context -> states (B, H, S) = s_t + delta
    action sequencer: K step queries + context --cross-attend [memory, plan, predicted states]-->
                      (B, K, h) --four-layer MLP per step--> action_chunk (B, K, A); action = chunk[:, 0]

Loss = w_a * Huber(chunk, recorded chunk; steps past the episode's end masked)
     + w_t * cross-entropy(task_logits, scenario index)
     + w_s * MSE(predicted states, state encoder(real future frames).detach(); past-the-end masked)
     + w_v * mean over state features of max(0, gamma - std over the batch of s_t)   (VICReg's variance term)

Every operation is per sample (attention within one sample, LayerNorm over features), so one sample's chunk
does not depend on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mobile_vla.policies.base import FeatureDims, Policy, PolicyConfig, check_probability
from mobile_vla.policies.case1 import CASE1_TRAIN
from mobile_vla.policies.heads import ACTIVATIONS, MLPHead
from mobile_vla.policies.registry import CaseSpec, register_case
from mobile_vla.policies.resampler import (
    Attention,
    FeedForward,
    ResamplerBlock,
    ResamplerConfig,
    VisionResampler,
)

# The lab's scenarios {1box,2box} x {vert,hori} x {left,right}: the task labels (see data.windows.TASK_NAMES).
NUM_SCENARIOS = 8
IGNORE_TASK = -100


@dataclass
class RoboVLMsConfig(PolicyConfig):
    """Case 4's model (the seed's ``RoboVLMsCompleteModel``). Key names follow the seed.

    Departures from the seed:
      * ``num_tasks`` defaults to 8, not 10: the seed never said what a task is; here the task label is the
        episode's scenario (``{1box,2box}_{vert,hori}_{left,right}``, 8 of them, ``data.windows.TASK_NAMES``).
        More logits than scenarios are allowed (unused), fewer are an error at training time.
      * The state targets are the model's own state encoding of the *real* future frames, detached (no
        gradient flows into the targets), so the state predictor cannot lower its loss by moving them.
        Detaching alone still leaves a trivial zero: a state encoder that maps every frame to the same
        vector makes every target equal to every prediction (the encoder's LayerNorm has no affine weights,
        but a constant bias survives it). A variance term (Bardes et al., VICReg, 2022) keeps the encodings
        of a batch apart: ``state_variance_weight * mean_j max(0, state_variance_target - std_batch(s_t)_j)``,
        so a collapsed encoder pays ``state_variance_weight * state_variance_target``. It is a training-only
        term over the batch; predictions stay per sample.
      * The seed trained on dummy data; here the window dataset gives real history windows, action chunks
        (masked at the episode end) and future frames.

    Attributes:
        action_dims: predicted axes (default ``("linear_x", "linear_y")``).
        hidden_dim: width h of every embedding (seed: 512).
        state_dim: S, size of a predicted state (seed: 64).
        dropout: dropout in the MLPs and attention (seed: 0.1).
        activation: activation of the MLPs (``relu``, ``gelu``, ``silu``, ``tanh``).
        use_vision_resampler: resample each frame's image tokens (True) or project its pooled feature.
        use_hierarchical_planning: task planner + plan; off = no task logits, no task loss.
        use_state_prediction: state predictor; off = no future frames, no state loss.
        num_tasks: task logits (>= 8, the scenarios).
        max_plan_length: P, sub-goal embeddings in a plan (seed: 5).
        max_sequence_length: K, actions per predicted chunk, the current one first (seed: 5).
        prediction_horizon: H, future states predicted, frames t+1 .. t+H (seed: 5).
        history_length: W, frames per history window, the current one included (RoboVLMs' window).
        num_latents: latents of the vision resampler (64, four times Case 2's).
        resampler_heads: attention heads of the resampler.
        resampler_depth: resampler blocks.
        num_heads: attention heads of the temporal, planner and sequencer blocks.
        temporal_depth: self-attention blocks over [text, frames].
        action_loss_weight: w_a, weight of the chunk's Huber loss.
        task_loss_weight: w_t, weight of the task cross-entropy.
        state_loss_weight: w_s, weight of the state-prediction MSE.
        state_variance_weight: w_v, weight of the variance term that keeps the state encoder from collapsing.
        state_variance_target: gamma, the per-feature standard deviation over a batch below which the
            variance term pays (the encodings are LayerNorm'd, so a feature's std over a batch is at most ~1).
    """

    hidden_dim: int = 512
    state_dim: int = 64
    dropout: float = 0.1
    activation: str = "relu"
    use_vision_resampler: bool = True
    use_hierarchical_planning: bool = True
    use_state_prediction: bool = True
    num_tasks: int = NUM_SCENARIOS
    max_plan_length: int = 5
    max_sequence_length: int = 5
    prediction_horizon: int = 5
    history_length: int = 4
    num_latents: int = 64
    resampler_heads: int = 8
    resampler_depth: int = 2
    num_heads: int = 8
    temporal_depth: int = 1
    action_loss_weight: float = 1.0
    task_loss_weight: float = 0.1
    state_loss_weight: float = 0.1
    state_variance_weight: float = 0.1
    state_variance_target: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for key in ("hidden_dim", "state_dim", "max_plan_length", "max_sequence_length", "prediction_horizon",
                    "history_length", "num_heads", "temporal_depth"):  # fmt: skip
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}.{key} must be an int >= 1, got {value!r}")
        if self.hidden_dim < 2 or self.hidden_dim % self.num_heads:
            raise ValueError(
                f"{name}.num_heads={self.num_heads} must divide hidden_dim={self.hidden_dim} (and hidden_dim >= 2)"
            )
        if not isinstance(self.num_tasks, int) or self.num_tasks < NUM_SCENARIOS:
            raise ValueError(
                f"{name}.num_tasks must be an int >= {NUM_SCENARIOS} (the task label is the scenario, one of "
                f"{NUM_SCENARIOS}), got {self.num_tasks!r}"
            )
        check_probability(name, dropout=self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"{name}.activation {self.activation!r} unknown; choose from {sorted(ACTIVATIONS)}"
            )
        for key in ("action_loss_weight", "task_loss_weight", "state_loss_weight", "state_variance_weight",
                    "state_variance_target"):  # fmt: skip
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}.{key} must be a number >= 0, got {value!r}")
        for key in ("use_vision_resampler", "use_hierarchical_planning", "use_state_prediction"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{name}.{key} must be true or false, got {getattr(self, key)!r}")
        self.resampler_config()

    def resampler_config(self) -> ResamplerConfig:
        try:
            return ResamplerConfig(
                num_latents=self.num_latents,
                dim=self.hidden_dim,
                depth=self.resampler_depth,
                num_heads=self.resampler_heads,
                dropout=self.dropout,
            )
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}: bad resampler setting: {exc}") from None


class TransformerBlock(nn.Module):
    """Pre-LN self-attention + FFN over a sequence, with padded positions hidden from the keys."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout=dropout)
        self.ffn = FeedForward(dim, 4, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.norm(x)
        x = x + self.attn(normed, normed, key_mask=mask)  # (B, M, D)
        return x + self.ffn(x)  # (B, M, D)


class RoboVLMsCompleteModel(Policy):
    """A history window of frames + the instruction -> an action chunk, task logits, a plan and future states.

    Features (``W`` = ``history_length``): ``history_tokens`` (B, W, N, Dtok) (or ``history_vision``
    (B, W, Dv) without the resampler), ``history_mask`` (B, W) (1 = a real frame, 0 = padding before the
    episode's start), ``text`` (B, Dt), ``vision`` (B, Dv) of the current frame (the state encoder's input),
    and, for the state loss only, ``future_vision`` (B, H, Dv) of the frames t+1 .. t+H.
    """

    config_class: ClassVar[type[PolicyConfig]] = RoboVLMsConfig
    # The preset's features; an instance lists its own (they follow the use_* switches).
    required_features: ClassVar[tuple[str, ...]] = ("history_tokens", "history_mask", "text", "vision")
    # Features only the loss needs: computed during training and validation, never at inference.
    training_features: ClassVar[tuple[str, ...]] = ("future_vision",)

    def __init__(self, config: RoboVLMsConfig, dims: FeatureDims | Mapping[str, Any]) -> None:
        super().__init__(config, dims)
        c = config
        h, w = c.hidden_dim, c.history_length
        frame_feature = "history_tokens" if c.use_vision_resampler else "history_vision"
        self.required_features = (frame_feature, "history_mask", "text") + (
            ("vision",) if c.use_state_prediction else ()
        )
        self.training_features = ("future_vision",) if c.use_state_prediction else ()

        # Frames and instruction.
        if c.use_vision_resampler:
            if not self.dims.token_dim:
                raise ValueError(
                    "Case 4 resamples image tokens, but the backbone reports no token_dim; use a backbone with "
                    "encode_image_tokens or set use_vision_resampler=False"
                )
            self.resampler = VisionResampler(
                c.resampler_config(), self.dims.token_dim, self.dims.num_image_tokens
            )
        else:
            self.frame_proj = nn.Linear(self.dims.vision, h)
        self.text_proj = nn.Linear(self.dims.text, h)
        # Position in the window (the last slot is the current frame) and a marker for the text token. Like
        # the plan and step queries below, they start at unit scale, the scale of the LayerNorm'd frame
        # embeddings they are added to: at ViT's 0.02 the K step queries were near-identical after the
        # blocks' LayerNorms, so every step of a chunk started out predicting the same action.
        self.time_embed = nn.Parameter(torch.randn(w, h))
        self.text_embed = nn.Parameter(torch.randn(h))
        self.temporal = nn.ModuleList(
            TransformerBlock(h, c.num_heads, c.dropout) for _ in range(c.temporal_depth)
        )
        self.norm_memory = nn.LayerNorm(h)

        # Task planner: task logits and a plan of sub-goal embeddings.
        if c.use_hierarchical_planning:
            self.task_head = MLPHead([h, h, c.num_tasks], c.activation, c.dropout)
            self.task_embed = nn.Linear(c.num_tasks, h, bias=False)  # soft task -> embedding
            self.plan_queries = nn.Parameter(torch.randn(c.max_plan_length, h))
            self.planner = ResamplerBlock(h, c.num_heads, 4, c.dropout)
            self.norm_plan = nn.LayerNorm(h)

        # State predictor: encodes the current frame, predicts the next H encodings.
        if c.use_state_prediction:
            self.state_encoder = nn.Sequential(
                nn.Linear(self.dims.vision, c.state_dim), nn.LayerNorm(c.state_dim, elementwise_affine=False)
            )
            self.state_head = MLPHead(
                [h + c.state_dim, h, h, c.prediction_horizon * c.state_dim], c.activation, c.dropout
            )
            self.state_to_memory = nn.Linear(c.state_dim, h)

        # Action sequencer: K step queries read the memory, the plan and the predicted states.
        self.step_queries = nn.Parameter(torch.randn(c.max_sequence_length, h))
        self.sequencer = ResamplerBlock(h, c.num_heads, 4, c.dropout)
        self.norm_steps = nn.LayerNorm(h)
        self.action_head = MLPHead([2 * h, 2 * h, h, h // 2, c.output_dim], c.activation, c.dropout)

    @property
    def history_length(self) -> int:
        """W: frames the policy sees per step, the current one last (inference keeps this many)."""
        return self.config.history_length

    @property
    def chunk_length(self) -> int:
        return self.config.max_sequence_length

    def dataset_kwargs(self) -> dict[str, Any]:
        """The window dataset's arguments (``mobile_vla.data.windows.WindowDataset``)."""
        c = self.config
        return {
            "history": c.history_length,
            "chunk": c.max_sequence_length,
            "horizon": c.prediction_horizon if c.use_state_prediction else 0,
        }

    def _encode_frames(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        if c.use_vision_resampler:
            tokens = features["history_tokens"]  # (B, W, N, Dtok)
            if tokens.dim() != 4:
                raise ValueError(f"history_tokens must be (B, W, N, Dtok), got shape {tuple(tokens.shape)}")
            b, w = tokens.shape[:2]
            frames = self.resampler(tokens.flatten(0, 1)).view(b, w, -1)  # (B, W, h)
        else:
            frames = self.frame_proj(features["history_vision"])  # (B, W, h)
        if frames.shape[1] != c.history_length:
            raise ValueError(
                f"Case 4 was built for history windows of {c.history_length} frames, got {frames.shape[1]}"
            )
        return frames + self.time_embed  # (B, W, h)

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        frames = self._encode_frames(features)  # (B, W, h)
        b = frames.shape[0]
        text = self.text_proj(features["text"]) + self.text_embed  # (B, h)
        history_mask = features.get("history_mask")
        history_mask = (
            frames.new_ones(b, c.history_length, dtype=torch.bool)
            if history_mask is None
            else history_mask.bool()
        )  # (B, W)
        ones = history_mask.new_ones(b, 1)
        memory = torch.cat([text[:, None], frames], dim=1)  # (B, 1+W, h)
        memory_mask = torch.cat([ones, history_mask], dim=1)  # (B, 1+W)
        for block in self.temporal:
            memory = block(memory, memory_mask)
        memory = self.norm_memory(memory)  # (B, 1+W, h)
        context = memory[:, -1]  # (B, h): the current frame's token, after seeing the text and the history
        outputs: dict[str, torch.Tensor] = {}
        reads, read_masks = [memory], [memory_mask]

        if c.use_hierarchical_planning:
            task_logits = self.task_head(context)  # (B, T)
            task = self.task_embed(task_logits.softmax(dim=-1))  # (B, h)
            queries = self.plan_queries + (context + task)[:, None]  # (B, P, h)
            plan = self.norm_plan(self.planner(queries, memory, memory_mask))  # (B, P, h)
            outputs.update(task_logits=task_logits, plan=plan)
            reads.append(plan)
            read_masks.append(ones.expand(b, c.max_plan_length))

        if c.use_state_prediction:
            state = self.state_encoder(features["vision"])  # (B, S)
            delta = self.state_head(torch.cat([context, state], dim=-1))  # (B, H*S)
            states = state[:, None] + delta.view(b, c.prediction_horizon, c.state_dim)  # (B, H, S)
            outputs.update(states=states, state=state)
            if "future_vision" in features:
                with torch.no_grad():  # targets: the encoding of the real future frames, no gradient
                    outputs["state_targets"] = self.state_encoder(features["future_vision"])  # (B, H, S)
            reads.append(self.state_to_memory(states))  # (B, H, h)
            read_masks.append(ones.expand(b, c.prediction_horizon))

        queries = self.step_queries + context[:, None]  # (B, K, h)
        steps = self.sequencer(queries, torch.cat(reads, dim=1), torch.cat(read_masks, dim=1))  # (B, K, h)
        steps = self.norm_steps(steps)
        per_step = torch.cat([steps, context[:, None].expand_as(steps)], dim=-1)  # (B, K, 2h)
        chunk = self.action_head(per_step)  # (B, K, A)
        outputs.update(action=chunk[:, 0], action_chunk=chunk)
        return outputs

    def compute_loss(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        chunk = outputs["action_chunk"]  # (B, K, A)
        device, dtype = chunk.device, chunk.dtype
        stored = None
        if "action_chunk" in batch:
            target = batch["action_chunk"].to(device, dtype)  # (B, K, A)
            mask = batch["action_chunk_mask"].to(device).bool()  # (B, K)
            stored = batch.get("action_chunk_class")  # (B, K), -1 where the file stores no class
        else:  # a single-frame batch: only the first step has a target
            chunk = chunk[:, :1]
            target = batch["action"].to(device, dtype)[:, None]  # (B, 1, A)
            mask = torch.ones(target.shape[:2], dtype=torch.bool, device=device)
            if batch.get("key_class") is not None:
                stored = torch.as_tensor(batch["key_class"])[:, None]  # (B, 1)
        steps = {"action_chunk": chunk}
        if "action_chunk_logits" in outputs:  # action_space: keys
            steps["action_chunk_logits"] = outputs["action_chunk_logits"][:, : chunk.shape[1]]
        per_step = self.action_loss_terms(steps, "action_chunk", target, stored)  # (B, K)
        chunk_loss = _masked_mean(per_step, mask)
        loss = c.action_loss_weight * chunk_loss
        with torch.no_grad():
            first_step = per_step[:, 0].mean()
            chunk_mae = _masked_mean((chunk - target).abs().mean(dim=-1), mask)
        logs = {
            "action_loss": float(first_step),
            "chunk_loss": float(chunk_loss.detach()),
            "chunk_mae": float(chunk_mae),
        }

        if c.use_hierarchical_planning and "task" in batch:
            labels = torch.as_tensor(batch["task"], device=device).long()  # (B,)
            logits = outputs["task_logits"]  # (B, T)
            if int(labels.max()) >= c.num_tasks:
                raise ValueError(
                    f"task label {int(labels.max())} >= num_tasks={c.num_tasks}; raise num_tasks in the config"
                )
            valid = labels != IGNORE_TASK
            if bool(valid.any()):
                task_loss = F.cross_entropy(logits[valid], labels[valid])
                accuracy = (logits[valid].argmax(dim=-1) == labels[valid]).float().mean()
                loss = loss + c.task_loss_weight * task_loss
                logs.update(task_loss=float(task_loss.detach()), task_accuracy=float(accuracy))

        if c.use_state_prediction and "state_targets" in outputs:
            states, targets = outputs["states"], outputs["state_targets"].detach()  # (B, H, S)
            future_mask = batch.get("future_mask")
            future_mask = (
                torch.ones(states.shape[:2], dtype=torch.bool, device=device)
                if future_mask is None
                else future_mask.to(device).bool()
            )  # (B, H)
            state_loss = _masked_mean((states - targets).pow(2).mean(dim=-1), future_mask)
            loss = loss + c.state_loss_weight * state_loss
            logs["state_loss"] = float(state_loss.detach())
            current = outputs["state"]  # (B, S)
            if current.shape[0] > 1:  # a spread needs two samples
                spread = current.std(dim=0)  # (S,)
                variance_loss = F.relu(c.state_variance_target - spread).mean()
                loss = loss + c.state_variance_weight * variance_loss
                logs.update(
                    state_variance_loss=float(variance_loss.detach()), state_std=float(spread.mean().detach())
                )
        return loss, logs


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (0 when nothing is), keeping the graph."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# The seed's Case 4 settings: the standard recipe with patience 5.
CASE4_TRAIN = {**CASE1_TRAIN, "early_stopping_patience": 5}


@register_case("case4", aliases=("RoboVLMsCompleteModel",))
def case4() -> CaseSpec:
    return CaseSpec(
        policy_class=RoboVLMsCompleteModel,
        config=RoboVLMsConfig(),
        train=CASE4_TRAIN,
        description=(
            "RoboVLMs-style: history window, 64-latent resampler, task planner + action sequencer (chunk) "
            "+ state predictor (seed Case 4)"
        ),
    )
