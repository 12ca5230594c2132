"""One trained generative model per class label, sampled as a labelled mixture.

Why one generator per class (and not a label-conditional network): it works for every registered model and
every privacy mode unchanged, and its privacy follows from parallel composition alone. Each class's
generator is trained, under the run's privacy mode, only on the patients of that class; a patient has one
label, so one patient's data reaches one generator, and the run's (epsilon, delta) per unit is the maximum
over the classes (`dpmedgen.privacy.ledger.compose_parallel`). A conditional network would read the labels
too: input perturbation, which only adds noise to pixels, would then release every training label in clear.

The mixture draws every class equally often. The class proportions of the training data are counts of
private records; using them would need their own privacy budget, and balanced synthetic data is what a
downstream classifier wants anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from dpmedgen.models.base import GenerativeModel


class ClassMixture(nn.Module):
    """`components[label]` is the model trained on the images of class `label`."""

    def __init__(self, components: dict[int, GenerativeModel]) -> None:
        super().__init__()
        if len(components) < 2:
            raise ValueError(f"a class mixture needs at least two classes, got {sorted(components)}")
        kinds = {c.kind for c in components.values()}
        if len(kinds) != 1 or "fusion" in kinds:
            raise ValueError(f"a class mixture holds unconditional models of one kind, got kinds {sorted(kinds)}")
        self.labels = sorted(int(label) for label in components)
        self.components = nn.ModuleDict({str(label): components[label] for label in self.labels})
        self.kind = kinds.pop()
        self.modalities = next(iter(components.values())).modalities

    def component(self, label: int) -> GenerativeModel:
        return self.components[str(int(label))]

    def class_counts(self, n: int) -> dict[int, int]:
        """Samples per class for `n` in all: equal shares, the remainder to the lowest labels."""
        k = len(self.labels)
        return {label: n // k + (i < n % k) for i, label in enumerate(self.labels)}

    @torch.no_grad()
    def sample_labelled(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` samples in [0, 1], (n, 1, H, W), and their class labels (n,), classes in random order."""
        images, labels = [], []
        for label, count in self.class_counts(n).items():
            if count:
                images.append(self.component(label).sample(count, generator=generator))
                labels.append(torch.full((count,), label, dtype=torch.int64))
        order = torch.randperm(n, generator=generator)
        return torch.cat(images)[order], torch.cat(labels)[order]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_labelled(n, generator=generator)[0]
