from django.contrib import admin

from mailer.models import Delivery


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "kind",
        "status",
        "attempts",
        "smtp_code",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("user__email", "task_id", "message_id")
    list_select_related = ("user",)
    readonly_fields = [field.name for field in Delivery._meta.fields]
    date_hierarchy = "created_at"
