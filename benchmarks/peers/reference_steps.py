"""MeZO, FZOO and AdaMeZO steps written the way their released trainers do them, as baselines for
zotorch (docs/performance.md "Optimizer step"). Our code, from the description of the released
code in docs/algorithms.md "Where zotorch differs from the released code":

- a fresh integer seed per direction from a host RNG seeded once;
- every sweep reseeds torch's RNG with that seed and walks the trainable tensors in order,
  materialising each tensor's direction with torch.normal (MeZO, AdaMeZO) or a ±1 draw (FZOO) in
  the parameter dtype, then adds it;
- MeZO: 4 sweeps per step (+eps, -2eps, +eps restore, update), a .item() on the projected gradient;
- FZOO: 3N sweeps (perturb and restore each direction, then one update sweep per direction);
- AdaMeZO: MeZO's estimate with its own torch.Generator; after h+1 warm-up steps the update
  regenerates, tensor by tensor, the h directions of the window from h generators and builds the
  moments in two buffers of the tensor's shape and dtype.

Two variants (docs/performance.md "The peers"):

- tidied (MeZOPeer, FZOOPeer, AdaMeZOPeer): where the released code allocates more than needed we
  take the cheaper form, so the comparison can only flatter the peers: in-place p.add_(z, alpha=...)
  instead of p.data = p.data + ... (fewer temporaries per tensor), FZOO's ±1 draw is the fastest of
  the obvious ATen draws on this machine and dtype (fastest_rademacher, measured when the peer is
  built), and AdaMeZO's seed history is trimmed to the window (the release keeps every step's seed);
- release-faithful (MeZOReleasePeer, FZOOReleasePeer): each step does the tensor operations the
  released trainer does, out of place, in the same order: MeZO's torch.normal + param.data =
  param.data + scaling * z * eps and its update that computes weight_decay * param.data even when
  weight_decay is 0; FZOO's torch.randint(0, 2) * 2 - 1, its per-step scalars drawn with
  torch.rand(1).item() per tensor, its loss tensors and the f-strings it logs. The forward pass is
  the benchmark's closure in both."""
import random
import time

import torch


def _trainable(named_parameters):
    return [(n, p) for n, p in named_parameters if p.requires_grad]


def _no_decay(name):
    # MeZO's rule: no weight decay for biases and layer norms (matched on the name).
    return "bias" in name or "layer_norm" in name or "layernorm" in name


# The obvious ways to draw a ±1 tensor like p from torch's global generator (so that a reseed
# regenerates it). sign() of a normal draw is 0 only for an exact 0 (never in float32/bfloat16;
# for float16 about 5e-8 of the elements), which a benchmark can ignore.
RADEMACHER_DRAWS = {
    "bernoulli": lambda p: torch.empty_like(p).bernoulli_(0.5).mul_(2).sub_(1),
    "randint": lambda p: torch.randint_like(p, 0, 2).mul_(2).sub_(1),
    "random": lambda p: torch.empty_like(p).random_(0, 2).mul_(2).sub_(1),
    "randn_sign": lambda p: torch.randn_like(p).sign_(),
    "rand_lt": lambda p: torch.rand_like(p).lt_(0.5).mul_(2).sub_(1),
}


def fastest_rademacher(tensors, repeats=3):
    """The name of the fastest draw of RADEMACHER_DRAWS over these tensors (median of `repeats`
    passes after a warm-up) and every draw's median ms for one pass."""
    device = tensors[0].device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ms = {}
    with torch.no_grad():
        for name, draw in RADEMACHER_DRAWS.items():
            times = []
            for r in range(repeats + 1):
                sync()
                start = time.perf_counter()
                for p in tensors:
                    draw(p)
                sync()
                if r:
                    times.append(time.perf_counter() - start)
            ms[name] = round(1e3 * sorted(times)[len(times) // 2], 4)
    return min(ms, key=ms.get), ms


class MeZOPeer:
    sweeps_per_step = 4

    def __init__(self, named_parameters, lr=1e-6, eps=1e-3, weight_decay=0.0, seed=0):
        self.params = _trainable(named_parameters)
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.host_rng = random.Random(seed)
        self.seed = None
        self.projected_grad = None

    def _gaussian(self, p):
        return torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)

    def _perturb(self, scaling):
        torch.manual_seed(self.seed)
        for _, p in self.params:
            p.add_(self._gaussian(p), alpha=scaling * self.eps)

    @torch.no_grad()
    def step(self, closure):
        self.seed = self.host_rng.randrange(1_000_000_000)
        self._perturb(+1)
        loss_plus = closure()
        self._perturb(-2)
        loss_minus = closure()
        self.projected_grad = ((loss_plus - loss_minus) / (2 * self.eps)).item()
        self._perturb(+1)
        torch.manual_seed(self.seed)
        for name, p in self.params:
            z = self._gaussian(p)
            if self.weight_decay and not _no_decay(name):
                p.sub_(self.lr * (self.projected_grad * z + self.weight_decay * p))
            else:
                p.add_(z, alpha=-self.lr * self.projected_grad)
        return loss_plus

    def state_bytes(self):
        return 16  # the step's seed and projected gradient


class FZOOPeer:
    def __init__(self, named_parameters, lr=1e-5, eps=1e-3, num_perturbations=8, seed=0, rademacher="fastest"):
        self.params = _trainable(named_parameters)
        self.lr, self.eps, self.n = lr, eps, num_perturbations
        self.host_rng = random.Random(seed)
        self.seeds, self.losses = [], []
        self.rademacher_ms = {}
        if rademacher == "fastest":
            rademacher, self.rademacher_ms = fastest_rademacher([p for _, p in self.params])
        self.rademacher = rademacher
        self._draw = RADEMACHER_DRAWS[rademacher]

    @property
    def sweeps_per_step(self):
        return 3 * self.n

    def _perturb(self, seed, scaling):
        torch.manual_seed(seed)
        for _, p in self.params:
            p.add_(self._draw(p), alpha=scaling)  # ±1 in the parameter dtype

    @torch.no_grad()
    def step(self, closure):
        self.seeds, self.losses = [], []
        for _ in range(self.n):
            seed = self.host_rng.randrange(1_000_000_000)
            self.seeds.append(seed)
            self._perturb(seed, +self.eps)
            self.losses.append(closure())
            self._perturb(seed, -self.eps)
        perturbed = torch.stack(self.losses).float()
        sigma = perturbed.std(unbiased=False)  # population std of the N perturbed losses
        loss_0 = closure()                     # the base loss, evaluated last as in the release
        coefficients = ((perturbed - loss_0) / (self.n * sigma)).tolist()
        for seed, c in zip(self.seeds, coefficients):
            self._perturb(seed, -self.lr * c)  # one update sweep per direction
        return loss_0

    def state_bytes(self):
        return 16 * self.n  # N seeds and N losses


class MeZOReleasePeer:
    """MeZO's released step, operation for operation (out of place, as the release writes it)."""
    sweeps_per_step = 4

    def __init__(self, named_parameters, lr=1e-6, eps=1e-3, weight_decay=0.0, seed=0):
        self.named_parameters = list(named_parameters)
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.host_rng = random.Random(seed)
        self.seed = None
        self.projected_grad = None

    def _perturb(self, scaling):
        torch.manual_seed(self.seed)
        for _, p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scaling * z * self.eps

    @torch.no_grad()
    def step(self, closure):
        self.params = _trainable(self.named_parameters)  # rebuilt every step, as the release does
        self.seed = self.host_rng.randrange(1_000_000_000)
        self._perturb(1)
        loss_plus = closure()
        self._perturb(-2)
        loss_minus = closure()
        self.projected_grad = ((loss_plus - loss_minus) / (2 * self.eps)).item()
        self._perturb(1)
        torch.manual_seed(self.seed)
        for name, p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            if not _no_decay(name):
                # The release computes the decay term even when weight_decay is 0.
                p.data = p.data - self.lr * (self.projected_grad * z + self.weight_decay * p.data)
            else:
                p.data = p.data - self.lr * (self.projected_grad * z)
        return loss_plus

    def state_bytes(self):
        return 16  # the step's seed and projected gradient


class FZOOReleasePeer:
    """FZOO's released step, operation for operation (out of place, torch.randint directions)."""

    def __init__(self, named_parameters, lr=1e-5, eps=1e-3, num_perturbations=8, seed=0):
        self.named_parameters = list(named_parameters)
        self.lr, self.eps, self.n = lr, eps, num_perturbations
        self.host_rng = random.Random(seed)
        self.params, self.rand_values, self.seeds = [], [], []
        self.projected_grad = None
        self.log = []  # the release formats these three lines per step for its logger

    @property
    def sweeps_per_step(self):
        return 3 * self.n

    def _z(self, p):
        return torch.randint(0, 2, size=p.data.size(), device=p.data.device, dtype=p.data.dtype) * 2 - 1

    def _perturb(self, seed, scaling):
        torch.manual_seed(seed)
        for (_, p), _unused in zip(self.params, self.rand_values):
            p.data = p.data + scaling * self._z(p) * self.eps

    @torch.no_grad()
    def step(self, closure):
        self.params = _trainable(self.named_parameters)  # rebuilt every step, as the release does
        self.rand_values = [torch.rand(1).item() for _ in range(len(self.params))]  # drawn, never used
        self.seeds = []
        losses = []
        for _ in range(self.n):
            seed = self.host_rng.randrange(1_000_000_000)
            self.seeds.append(seed)
            self._perturb(seed, 1)
            losses.append(closure().detach())
            self._perturb(seed, -1)
        losses = torch.tensor(losses, dtype=torch.float32)
        std = torch.std(losses, unbiased=False)
        loss_0 = closure().detach().cpu()
        self.projected_grad = (losses - loss_0) / (self.n * std)
        self.log = [f"std: {std}", f"loss: {loss_0}", f"current_lr: {self.lr:.3e}"]
        for idx, seed in enumerate(self.seeds):  # the update: one sweep per direction
            torch.manual_seed(seed)
            for (_, p), _unused in zip(self.params, self.rand_values):
                p.data = p.data - self.lr * (self.projected_grad[idx] * self._z(p))
        return loss_0

    def state_bytes(self):
        # N seeds, N projected gradients (float32) and one unused scalar per tensor.
        return 8 * self.n + 4 * self.n + 8 * len(self.rand_values)


class AdaMeZOPeer:
    sweeps_per_step = 4  # +eps, -2eps, +eps, and the update (which regenerates h directions)

    def __init__(self, named_parameters, lr=1e-7, eps=1e-3, window=10, beta1=0.7, beta2=0.9, weight_decay=0.0,
                 seed=0):
        self.params = _trainable(named_parameters)
        self.lr, self.eps, self.h = lr, eps, window
        self.beta1, self.beta2, self.weight_decay = beta1, beta2, weight_decay
        self.device = self.params[0][1].device
        self.host_rng = random.Random(seed)
        self.generator = torch.Generator(device=self.device)
        self.seeds, self.grads = [], []
        self.t = 0

    def _gaussian(self, p, generator):
        return torch.normal(mean=0.0, std=1.0, size=p.shape, generator=generator, device=p.device, dtype=p.dtype)

    def _perturb(self, seed, scaling):
        self.generator.manual_seed(seed)
        for _, p in self.params:
            p.add_(self._gaussian(p, self.generator), alpha=scaling * self.eps)

    @torch.no_grad()
    def step(self, closure):
        seed = self.host_rng.randrange(1_000_000_000)
        self._perturb(seed, +1)
        loss_plus = closure()
        self._perturb(seed, -2)
        loss_minus = closure()
        g = ((loss_plus - loss_minus) / (2 * self.eps)).item()
        self._perturb(seed, +1)
        self.seeds.append(seed)
        self.grads.append(g)
        del self.seeds[:-self.h], self.grads[:-self.h]
        if self.h < 2 or self.t <= self.h:
            self._mezo_update(seed, g)  # warm-up: the first h + 1 steps
        else:
            self._adaptive_update()
        self.t += 1
        return loss_plus

    def _mezo_update(self, seed, g):
        self.generator.manual_seed(seed)
        for name, p in self.params:
            z = self._gaussian(p, self.generator)
            if self.weight_decay and not _no_decay(name):
                p.sub_(self.lr * (g * z + self.weight_decay * p))
            else:
                p.add_(z, alpha=-self.lr * g)

    def _adaptive_update(self):
        # One generator per window slot, oldest first; each advances tensor by tensor through its
        # step's stream, so tensor j's direction of step t-k is regenerated without replaying the others.
        generators = []
        for seed in self.seeds:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            generators.append(gen)
        ages = range(len(self.seeds) - 1, -1, -1)
        for name, p in self.params:
            m = torch.zeros_like(p)
            v = torch.zeros_like(p)
            for gen, g, age in zip(generators, self.grads, ages):
                z = self._gaussian(p, gen)
                m.add_(z, alpha=self.beta1 ** age * g)
                v.addcmul_(z, z, value=self.beta2 ** age * g * g)
            update = m.mul_(100).div_(v.sqrt_().add_(1e-5))
            if self.weight_decay and not _no_decay(name):
                update.add_(p, alpha=self.weight_decay)
            p.add_(update, alpha=-self.lr)

    def state_bytes(self):
        return 8 * (len(self.seeds) + len(self.grads)) + 8  # the window's seeds and gradients, the step counter
