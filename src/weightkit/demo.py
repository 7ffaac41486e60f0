"""``make demo``: train two classic small networks, save them, and show what weightkit sees.

Run with ``python -m weightkit.demo [OUTDIR] [REPORT]`` (defaults ``demo/out`` and ``demo/report.html``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

import weightkit
from weightkit._atomic import atomic_write

console = Console(width=None if sys.stdout.isatty() else 140)


def build_cnn():
    """A small CNN for 32×32 RGB images: two conv layers and a linear head (10 classes)."""
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)  # BatchNorm's shift is the bias
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Linear(32 * 8 * 8, 10)

        def forward(self, x):
            x = self.pool(nn.functional.relu(self.bn1(self.conv1(x))))
            x = self.pool(nn.functional.relu(self.conv2(x)))
            return self.head(x.flatten(1))

    return SmallCNN()


def build_rnn(vocab: int = 1000):
    """A sentiment classifier: embedding, a bidirectional LSTM, and a linear head."""
    import torch
    from torch import nn

    class SentimentRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, 32)
            self.lstm = nn.LSTM(32, 64, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * 64, 2)

        def forward(self, tokens):
            # the final state of each direction: out[:, -1] would give the backward direction one
            # token only, and its weight_hh_l0_reverse no gradient at all
            _, (h, _) = self.lstm(self.embedding(tokens))
            return self.head(torch.cat([h[-2], h[-1]], dim=1))

    return SentimentRNN()


def train(model, make_batch, steps: int, *, run_dir: Path, name: str):
    """A plain training loop; the two ``watch`` lines record gradients and updates to a run."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    with weightkit.watch(model, optimizer=opt, every=2, name=name, run_dir=run_dir, overwrite=True):
        for _ in range(steps):
            x, y = make_batch()
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
    return opt, loss.item()


def main(argv: list[str] | None = None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo/out")
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    console.rule("[bold]weightkit demo")
    console.print("Training two small networks on generated data (a few steps each, CPU)…")

    cnn = build_cnn()

    def image_batch():
        y = torch.randint(0, 10, (32,), generator=gen)
        x = torch.randn(32, 3, 32, 32, generator=gen) + y.view(-1, 1, 1, 1) / 5
        return x, y

    _, cnn_loss = train(cnn, image_batch, steps=20, run_dir=out / "runs", name="cnn")
    cnn_path = out / "cnn.pt"
    with atomic_write(cnn_path) as fh:
        torch.save(cnn.state_dict(), fh)

    rnn = build_rnn()

    def text_batch():
        y = torch.randint(0, 2, (32,), generator=gen)
        tokens = torch.randint(0, 500, (32, 20), generator=gen) + 500 * y.view(-1, 1)
        return tokens, y

    opt, rnn_loss = train(rnn, text_batch, steps=20, run_dir=out / "runs", name="rnn")
    rnn_path = out / "sentiment_rnn.pt"
    with atomic_write(rnn_path) as fh:
        torch.save({"epoch": 1, "step": 20, "loss": rnn_loss, "model_state_dict": rnn.state_dict(),
                    "optimizer_state_dict": opt.state_dict()}, fh)
    console.print(f"  CNN  final loss {cnn_loss:.3f}  → saved its state dict to [cyan]{cnn_path}[/] (torch.save)")
    console.print(f"  RNN  final loss {rnn_loss:.3f}  → saved a training checkpoint to [cyan]{rnn_path}[/] "
                  "(torch.save of a dict with epoch, model and optimizer state)")

    for path, note in (
        (cnn_path, "A conv net's state dict, read without running any code from the file (weights_only, "
                   "memory-mapped: tensor bytes are not read). A state dict has no layer classes, so weightkit infers each layer's kind from names and shapes (marked *) and says what every axis means: "
                   "a Conv2d weight is out_channels × in_channels × kernel_h × kernel_w; a Linear weight is "
                   "out_features × in_features. BatchNorm running statistics are buffers, not parameters."),
        (rnn_path, "A training checkpoint: weightkit finds the model's state dict inside it, lists only the model's "
                   "weights, and shows the rest (epoch, loss, optimizer state) as metadata. The LSTM's weight_ih_l0 "
                   "stacks the four gates (input, forget, cell, output) along its first axis; '_reverse' tensors "
                   "belong to the backward direction of the bidirectional LSTM."),
    ):
        console.print()
        console.print(Panel(note, title=f"$ weightkit summary {path}", title_align="left", border_style="blue"))
        result = subprocess.run([sys.executable, "-m", "weightkit", "summary", str(path)], check=False)
        if result.returncode != 0:
            return result.returncode

    report = Path(argv[1] if len(argv) > 1 else "demo/report.html")
    report.parent.mkdir(parents=True, exist_ok=True)
    console.print()
    console.print(Panel("The whole picture in one self-contained page: layers, doctor findings, statistics, the CNN's "
                        "learned filters, weight heatmaps, and the gradient flow that weightkit.watch recorded "
                        "while the CNN trained.", title=f"$ weightkit report {cnn_path} --run {out / 'runs' / 'cnn'}",
                        title_align="left", border_style="blue"))
    result = subprocess.run([sys.executable, "-m", "weightkit", "report", str(cnn_path), "--run",
                             str(out / "runs" / "cnn"), "-o", str(report)], check=False)
    if result.returncode != 0:
        return result.returncode
    console.print(f"Open [bold cyan]{report.resolve()}[/] in a browser.")
    console.print()
    console.print("Next: [bold]weightkit summary PATH --json[/] for machine-readable output, "
                  "[bold]--select 'lstm.*'[/] to narrow it, and in Python: "
                  "[bold]ws = weightkit.open(path); ws['head.weight'].numpy()[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
