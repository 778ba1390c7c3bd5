"""A training process for the resume tests to kill: it trains as the command line or the resumable trainer does, and
writes one line per training batch it sees (epoch, image files, pixel sum) to the file $RESUME_PROBE_BATCHES.

    python tests/resume_probe.py ablate ARGS...          # python -m carafe_ultra ablate ARGS...
    python tests/resume_probe.py train DATA FOLDER       # resume.train of YOLOv8n with CARAFE, mosaic for 2 of 4 epochs
    python tests/resume_probe.py base DATA               # the ablation's pretrained base (4 epochs) trained on DATA
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def record_batches(trainer) -> None:
    """``on_train_start``: write every batch the trainer preprocesses (all training batches pass through it)."""
    preprocess = trainer.preprocess_batch

    def recorded(batch):
        with open(os.environ["RESUME_PROBE_BATCHES"], "a") as file:
            names = ",".join(Path(name).stem for name in batch["im_file"])
            file.write(f"{trainer.epoch} {names} {float(batch['img'].double().sum()):.1f}\n")
        return preprocess(batch)

    trainer.preprocess_batch = recorded


def main(argv: list[str]) -> None:
    from carafe_ultra.experiments import ablation

    if argv[0] in ("ablate", "base"):
        model_of = ablation.ultralytics_model

        def recording_model(*args, **kwargs):
            model = model_of(*args, **kwargs)
            model.add_callback("on_train_start", record_batches)
            return model

        ablation.ultralytics_model = recording_model
        if argv[0] == "base":  # the base trains on "other generated data": here, the given set
            ablation.default_data = lambda imgsz, seed=0, task="detect": argv[1]
            settings = ablation.Settings(pretrain_epochs=4, imgsz=64, batch=4, workers=0, out=os.devnull)
            print(ablation.pretrained_base(settings))
        else:
            from carafe_ultra.__main__ import main as command_line

            command_line(argv)
    else:
        from carafe_ultra import convert_yaml
        from carafe_ultra.experiments import resume

        data, folder = argv[1], Path(argv[2])
        model = ablation.ultralytics_model(convert_yaml("yolov8n.yaml", "carafe", folder.parent / "yamls"))
        model.add_callback("on_train_start", record_batches)
        metrics, _ = resume.train(model, folder, model.task_map[model.task]["trainer"], data=data, epochs=4,
                                  close_mosaic=2, mosaic=1.0, imgsz=64, batch=4, workers=0, device="cpu", seed=0,
                                  deterministic=True, optimizer="AdamW", lr0=0.003, warmup_epochs=1, plots=False,
                                  val=False)
        print(f"mAP50-95 {metrics.box.map}")
        resume.checkpoint_path(folder).unlink()  # what the training gave is kept: the caller's part


if __name__ == "__main__":
    main(sys.argv[1:])
