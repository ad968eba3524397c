"""The widget's Qt controls (built once; behaviour lives in _widget.SamtrackWidget)."""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout,
                            QLabel, QLineEdit, QListWidget, QProgressBar, QPushButton, QRadioButton, QSpinBox,
                            QVBoxLayout)

from samtrack.viewer._plots import ConfidencePlot, Timeline

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40)]

SHORTCUTS = [
    ("]", "next keyframe"), ("[", "previous keyframe"),
    ("Shift-F", "propagate forward"), ("Shift-B", "propagate backward"), ("Shift-D", "propagate both ways"),
    ("Shift-K", "propagate to the next keyframe"), ("Escape", "cancel propagation"),
    ("T", "toggle positive / negative clicks"), ("Shift-N", "new object"), ("Shift-L", "next low-confidence frame"),
    ("Control-Z", "undo the last paint correction"), ("Control-Shift-Z", "redo it"),
    ("click", "point (Ctrl/Alt-click: negative)"), ("Shift-drag", "box"), ("paint in 'masks'", "mask correction"),
    ("Shift-drag in exemplar mode", "positive exemplar box (Shift-Ctrl-drag: negative)"),
]


class ModelBox(QComboBox):
    """A combo box that says when its list is about to open (the widget re-reads what is downloaded)."""

    aboutToShow = Signal()

    def showPopup(self) -> None:
        self.aboutToShow.emit()
        super().showPopup()


def _add_buttons(row, buttons) -> None:
    for b, fn in buttons:
        b.clicked.connect(fn)
        row.addWidget(b)


def _find_panel(w, lay) -> None:
    """The find row: text, threshold, Find, Everything; exemplar mode; re-detection during propagation."""
    from samtrack.viewer import _finding as F

    box = QGroupBox("Find every object on the current frame")
    g = QGridLayout(box)
    w.find_text = QLineEdit()
    w.find_text.setPlaceholderText("text, e.g. cell (SAM3)")
    w.find_text.setToolTip(F.FIND_TIP)
    w.find_text.returnPressed.connect(lambda: w.find())
    w.spin_find = QDoubleSpinBox()
    w.spin_find.setRange(0.0, 1.0)
    w.spin_find.setSingleStep(0.05)
    w.spin_find.setValue(0.5)
    w.spin_find.setToolTip(F.THRESHOLD_TIP)
    w.btn_find, w.btn_everything = QPushButton("Find"), QPushButton("Everything")
    w.btn_find.setToolTip(F.FIND_TIP)
    w.btn_everything.setToolTip(F.EVERYTHING_TIP)
    w.btn_find.clicked.connect(lambda: w.find())
    w.btn_everything.clicked.connect(lambda: w.find_everything())
    for i, x in enumerate((w.find_text, w.spin_find, w.btn_find, w.btn_everything)):
        g.addWidget(x, 0, i)
    w.btn_exemplar = QPushButton("Exemplar boxes")
    w.btn_exemplar.setCheckable(True)
    w.btn_exemplar.setToolTip(F.EXEMPLAR_TIP)
    w.btn_exemplar.toggled.connect(w._on_exemplar_mode)
    b = QPushButton("Clear exemplars")
    b.clicked.connect(lambda: w.clear_exemplars())
    g.addWidget(w.btn_exemplar, 1, 0)
    g.addWidget(b, 1, 1)
    label = QLabel("re-detect every")
    w.spin_redetect = QSpinBox()
    w.spin_redetect.setRange(0, 100000)
    w.spin_redetect.setSuffix(" frames")
    w.spin_redetect.setSpecialValueText("off")
    for x in (label, w.spin_redetect):
        x.setToolTip(F.REDETECT_TIP)
    g.addWidget(label, 1, 2)
    g.addWidget(w.spin_redetect, 1, 3)
    lay.addWidget(box)


def build_panels(w) -> None:
    """Create the controls of widget ``w`` and connect them to its methods."""
    lay = QVBoxLayout(w)
    w.info = QLabel("no video yet: Open..., samtrack.viewer.view() or `samtrack view SOURCE`")
    w.info.setWordWrap(True)
    lay.addWidget(w.info)
    row = QHBoxLayout()
    from samtrack.viewer._models import PICKER_TIP

    w.model_box = ModelBox()
    w.model_box.setToolTip(PICKER_TIP)
    w.fill_models()
    w.model_box.aboutToShow.connect(w.fill_models)
    w.model_box.activated.connect(w._on_model_chosen)
    row.addWidget(w.model_box, 1)
    w.btn_open = QPushButton("Open...")
    w.btn_open.setToolTip("Open a video file (or cancel, then pick an image folder / TIFF stack)")
    w.btn_open.clicked.connect(w._open_dialog)
    row.addWidget(w.btn_open)
    lay.addLayout(row)
    from samtrack.viewer._remote import SERVER_TIP

    row = QHBoxLayout()  # empty: this machine; a URL: Open asks for a path on that server
    w.server_edit = QLineEdit()
    w.server_edit.setPlaceholderText("server URL (empty: this machine)")
    w.server_edit.setToolTip(SERVER_TIP)
    w.token_edit = QLineEdit()
    w.token_edit.setPlaceholderText("token file")
    w.token_edit.setToolTip("the token file samtrack serve wrote (copied to this machine)")
    row.addWidget(w.server_edit, 2)
    row.addWidget(w.token_edit, 1)
    lay.addLayout(row)

    box = QGroupBox("Objects")
    g = QVBoxLayout(box)
    w.objects = QListWidget()
    w.objects.currentItemChanged.connect(w._on_object_selected)
    w.objects.itemChanged.connect(w._on_object_renamed)
    g.addWidget(w.objects)
    row = QHBoxLayout()
    w.btn_add = QPushButton("Add")
    w.btn_color = QPushButton("Colour")
    w.btn_parent = QPushButton("Parent...")
    w.btn_remove = QPushButton("Remove")
    _add_buttons(row, ((w.btn_add, lambda: w.add_object()), (w.btn_color, w._pick_color),
                       (w.btn_parent, w._pick_parent), (w.btn_remove, lambda: w.remove_object())))
    g.addLayout(row)
    lay.addWidget(box)

    box = QGroupBox("Prompts on the current frame")
    g = QHBoxLayout(box)
    w.rb_pos, w.rb_neg = QRadioButton("positive"), QRadioButton("negative")
    w.rb_pos.setChecked(True)
    grp = QButtonGroup(w)
    for rb in (w.rb_pos, w.rb_neg):
        grp.addButton(rb)
        g.addWidget(rb)
    w.rb_pos.toggled.connect(lambda on: setattr(w, "positive", on))
    w.btn_clear = QPushButton("Clear frame")
    w.btn_clear.clicked.connect(lambda: w.clear_frame())
    g.addWidget(w.btn_clear)
    lay.addWidget(box)
    _find_panel(w, lay)

    box = QGroupBox("Propagate")
    g = QGridLayout(box)
    w.btn_fwd, w.btn_bwd = QPushButton("Forward"), QPushButton("Backward")
    w.btn_both, w.btn_next = QPushButton("Both"), QPushButton("To next keyframe")
    w.btn_cancel = QPushButton("Cancel")
    w.btn_cancel.setEnabled(False)
    for i, (b, d) in enumerate(((w.btn_fwd, "forward"), (w.btn_bwd, "backward"), (w.btn_both, "both"),
                                (w.btn_next, "next"))):
        b.clicked.connect(lambda _=False, d=d: w.propagate(d))
        g.addWidget(b, 0, i)
    w.btn_cancel.clicked.connect(w.cancel)
    w.progress = QProgressBar()
    w.progress.setFormat("%v / %m frames")
    g.addWidget(w.progress, 1, 0, 1, 3)
    g.addWidget(w.btn_cancel, 1, 3)
    lay.addWidget(box)

    box = QGroupBox("Timeline and confidence")
    g = QVBoxLayout(box)
    w.timeline = Timeline()
    w.timeline.frameClicked.connect(w.goto)
    w.plot = ConfidencePlot()
    w.plot.frameClicked.connect(w.goto)
    g.addWidget(w.timeline)
    g.addWidget(w.plot)
    row = QHBoxLayout()
    row.addWidget(QLabel("low confidence <"))
    w.spin_thr = QDoubleSpinBox()
    w.spin_thr.setRange(0.0, 1.0)
    w.spin_thr.setSingleStep(0.05)
    w.spin_thr.setValue(w.low_conf)
    w.spin_thr.valueChanged.connect(w._on_threshold)
    row.addWidget(w.spin_thr)
    b = QPushButton("Next low-confidence frame")
    b.clicked.connect(lambda: w.next_low_confidence())
    row.addWidget(b)
    g.addLayout(row)
    row = QHBoxLayout()
    _add_buttons(row, ((QPushButton("< keyframe"), lambda: w.goto_keyframe(-1)),
                       (QPushButton("keyframe >"), lambda: w.goto_keyframe(1))))
    g.addLayout(row)
    lay.addWidget(box)

    box = QGroupBox("Session")
    g = QHBoxLayout(box)
    w.btn_save = QPushButton("Save")
    w.btn_save.setToolTip("Write everything to the session folder; `samtrack view` with the same "
                             "--workdir reopens it")
    w.btn_save.clicked.connect(lambda: w.save())
    g.addWidget(w.btn_save)
    from samtrack.io.export import FORMATS

    w.fmt = QComboBox()
    w.fmt.addItems(list(FORMATS))
    g.addWidget(w.fmt)
    w.cb_incomplete = QCheckBox("include unfinished frames")
    w.cb_incomplete.setToolTip("frames never tracked or stale are exported empty")
    g.addWidget(w.cb_incomplete)
    w.btn_export = b = QPushButton("Export...")
    b.setToolTip("write the results in a format other tools open (disabled while a propagation runs)")
    b.clicked.connect(w._export_dialog)
    g.addWidget(b)
    lay.addWidget(box)

    keys = QLabel("<br>".join(f"<b>{k}</b>: {v}" for k, v in SHORTCUTS))
    keys.setTextFormat(Qt.TextFormat.RichText)
    box = QGroupBox("Shortcuts")
    QVBoxLayout(box).addWidget(keys)
    lay.addWidget(box)
    lay.addStretch(1)
    w.status = QLabel("")
    w.status.setWordWrap(True)
    lay.addWidget(w.status)
