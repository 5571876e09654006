"""MeZO, FZOO and AdaMeZO steps written the way their released trainers do them, as baselines for
zotorch (docs/performance.md "Optimizer step"). Our code, from the description of the released
code in docs/algorithms.md "Where zotorch differs from the released code":

- a fresh integer seed per direction from a host RNG seeded once;
- every sweep reseeds torch's RNG with that seed and walks the trainable tensors in order,
  materialising each tensor's direction with torch.normal (MeZO, AdaMeZO) or a Bernoulli draw
  mapped to +-1 (FZOO) in the parameter dtype, then adds it;
- MeZO: 4 sweeps per step (+eps, -2eps, +eps restore, update), a .item() on the projected gradient;
- FZOO: 3N sweeps (perturb and restore each direction, then one update sweep per direction);
- AdaMeZO: MeZO's estimate with its own torch.Generator; after h+1 warm-up steps the update
  regenerates, tensor by tensor, the h directions of the window from h generators and builds the
  moments in two buffers of the tensor's shape and dtype.

Where the released code allocates more than needed we take the cheaper form, so the comparison
can only flatter the peers: in-place p.add_(z, alpha=...) instead of p.data = p.data + ... (one
temporary less per tensor), and AdaMeZO's seed history trimmed to the window (the release keeps
every step's seed)."""
import random

import torch


def _trainable(named_parameters):
    return [(n, p) for n, p in named_parameters if p.requires_grad]


def _no_decay(name):
    # MeZO's rule: no weight decay for biases and layer norms (matched on the name).
    return "bias" in name or "layer_norm" in name or "layernorm" in name


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
    def __init__(self, named_parameters, lr=1e-5, eps=1e-3, num_perturbations=8, seed=0):
        self.params = _trainable(named_parameters)
        self.lr, self.eps, self.n = lr, eps, num_perturbations
        self.host_rng = random.Random(seed)
        self.seeds, self.losses = [], []

    @property
    def sweeps_per_step(self):
        return 3 * self.n

    def _perturb(self, seed, scaling):
        torch.manual_seed(seed)
        for _, p in self.params:
            u = torch.empty_like(p).bernoulli_(0.5).mul_(2).sub_(1)  # Rademacher in the parameter dtype
            p.add_(u, alpha=scaling)

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
