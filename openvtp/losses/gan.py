"""Stage-2 adversarial pieces for decoder fine-tuning: PatchGAN discriminator, hinge losses,
VQGAN's adaptive weight and a start-step gate (the taming / LightningDiT tokenizer recipe)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): 4x4 convs, `n_layers` with stride 2, each receptive-field patch gets a logit.

    GroupNorm instead of pix2pix/taming's BatchNorm: the output for an image does not depend on the
    rest of its batch, so separate real and fake passes, tiny per-rank batches and DDP (no SyncBN,
    no running statistics) all behave the same.
    """

    def __init__(self, in_ch: int = 3, base: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = base
        for i in range(1, n_layers + 1):
            out = base * min(2**i, 8)
            stride = 2 if i < n_layers else 1  # the last feature layer keeps resolution, as in pix2pix
            layers += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # pix2pix / DCGAN init
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, 1, H', W') logits (30 x 30 for 256 px and n_layers=3)."""
        return self.main(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss 0.5 * (mean relu(1 - real) + mean relu(1 + fake)) (taming's scale)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator (decoder) adversarial loss: -mean(D(fake))."""
    return -fake_logits.mean()


def adaptive_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN's balance: ||d rec / d W|| / (||d g / d W|| + eps) at the decoder's last layer W,
    clamped to [0, max_weight] and detached (it scales g_loss, it is not optimised).

    Both losses must still have their graphs (call before backward; the graphs are retained).
    Multiply by the configured discriminator weight outside.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def gan_start_factor(step: int, start_step: int) -> float:
    """0 before `start_step`, 1 from it on: the GAN terms switch on once the decoder is warm."""
    return 0.0 if step < start_step else 1.0
