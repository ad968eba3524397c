"""The object list of the widget: add, select, rename, recolour, lineage parent, remove, and the labels
layer's colours.

A mixin of :class:`samtrack.viewer._widget.SamtrackWidget`; it uses the widget's session, results,
``objects`` list, ``labels_layer``, ``active``, ``_editable``, ``refresh``, ``refresh_plots`` and ``_say``.
Objects are kept by the session (name, colour as (r, g, b) 0-255, parent id for lineage); the list shows
them, with the id as each item's ``UserRole`` data.
"""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QColorDialog, QInputDialog, QListWidgetItem

from samtrack.viewer._panels import PALETTE


class ObjectList:
    active: int | None  # the object clicks and strokes go to; set by the widget

    def object_color(self, oid: int) -> tuple[int, int, int]:
        meta = self.results.object_meta(oid) if oid in self.results.object_ids else {}
        c = meta.get("color")
        return tuple(int(x) for x in c[:3]) if c else PALETTE[(oid - 1) % len(PALETTE)]

    def _list_item(self, oid: int) -> QListWidgetItem:
        meta = self.results.object_meta(oid)
        item = QListWidgetItem(meta.get("name") or f"object-{oid}")
        item.setData(Qt.ItemDataRole.UserRole, oid)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        item.setIcon(self._swatch(oid))
        parent = meta.get("parent")
        item.setToolTip(f"id {oid}" + (f", parent {parent}" if parent else ""))
        self.objects.blockSignals(True)
        self.objects.addItem(item)
        self.objects.blockSignals(False)
        return item

    def _swatch(self, oid: int) -> QIcon:
        pix = QPixmap(12, 12)
        pix.fill(QColor(*self.object_color(oid)))
        return QIcon(pix)

    def _item(self, oid: int) -> QListWidgetItem | None:
        for i in range(self.objects.count()):
            it = self.objects.item(i)
            if it.data(Qt.ItemDataRole.UserRole) == oid:
                return it
        return None

    def add_object(self, name: str | None = None, color=None, parent: int | None = None) -> int | None:
        if not self._editable():
            return None
        oid = max(self.results.object_ids, default=0) + 1
        color = tuple(color) if color is not None else PALETTE[(oid - 1) % len(PALETTE)]
        self.session.add_object(oid, name=name, parent=parent, color=color)
        self._list_item(oid)
        self.set_active(oid)
        self._update_colormap()
        self.refresh_plots()
        return oid

    def set_active(self, oid: int) -> None:
        self.active = oid
        it = self._item(oid)
        if it is not None and self.objects.currentItem() is not it:
            self.objects.setCurrentItem(it)
        if self.labels_layer is not None:
            self.labels_layer.selected_label = oid
        self.refresh_plots()

    def _on_object_selected(self, cur, prev) -> None:
        if cur is not None:
            self.set_active(cur.data(Qt.ItemDataRole.UserRole))

    def _on_object_renamed(self, item) -> None:
        oid = item.data(Qt.ItemDataRole.UserRole)
        if self.session is not None and oid in self.session.obj_ids and item.text():
            self.session.add_object(oid, name=item.text())

    def rename_object(self, oid: int, name: str) -> None:
        self._item(oid).setText(name)  # itemChanged stores it

    def recolor_object(self, oid: int, color) -> None:
        if not self._editable():
            return
        self.session.add_object(oid, color=tuple(int(c) for c in color[:3]))
        self._item(oid).setIcon(self._swatch(oid))
        self._update_colormap()
        self.refresh_plots()

    def set_parent(self, oid: int, parent: int | None) -> None:
        """Lineage: ``parent`` is the cell ``oid`` divided from (kept in CTC export)."""
        if not self._editable():
            return
        if parent is not None and parent not in self.results.object_ids:
            self._say(f"no object {parent} to be the parent")
            return
        self.session.add_object(oid, parent=parent)
        self._item(oid).setToolTip(f"id {oid}" + (f", parent {parent}" if parent else ""))

    def _pick_color(self) -> None:
        if self.active is None:
            return
        c = QColorDialog.getColor(QColor(*self.object_color(self.active)), self, "Object colour")
        if c.isValid():
            self.recolor_object(self.active, (c.red(), c.green(), c.blue()))

    def _pick_parent(self) -> None:
        if self.active is None:
            return
        val, ok = QInputDialog.getInt(self, "Lineage parent", "parent object id (0: none)", 0, 0, 10**6)
        if ok:
            self.set_parent(self.active, val or None)

    def remove_object(self, oid: int | None = None) -> None:
        oid = self.active if oid is None else oid
        if oid is None or not self._editable():
            return
        self.session.remove_object(oid)
        it = self._item(oid)
        if it is not None:
            self.objects.takeItem(self.objects.row(it))
        ids = self.results.object_ids
        self.active = None
        if ids:
            self.set_active(ids[0])
        self.refresh()

    def _update_colormap(self) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        if self.labels_layer is None:
            return
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        for oid in self.results.object_ids:
            colors[oid] = tuple(c / 255 for c in self.object_color(oid)) + (1.0,)
        self.labels_layer.colormap = DirectLabelColormap(color_dict=colors)
