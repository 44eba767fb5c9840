from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator

from mailer import suppression
from mailer.dispatch import BrokerUnreachable
from mailer.models import Delivery, Suppression, TrackingEvent
from mailer.rerun import ResendInterrupted, resend_failed_deliveries
from users.admin import UserAdmin
from users.models import User


def task_results_url(task_id: str) -> str:
    """The django-celery-results admin list of this task id's results."""
    changelist = reverse("admin:django_celery_results_taskresult_changelist")
    return f"{changelist}?{urlencode({'task_id': task_id})}"


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "address",
        "kind",
        "status",
        "attempts",
        "smtp_code",
        "smtp_error",
        "created_at",
        "sent_at",
        "task_result",
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("user__email", "task_id", "message_id")
    list_select_related = ("user",)
    readonly_fields = [field.name for field in Delivery._meta.fields] + ["task_result"]
    date_hierarchy = "created_at"
    actions = ["resend"]

    def has_add_permission(self, request) -> bool:
        return False  # rows are written by registration, never by hand

    @admin.display(description="address", ordering="user__email")
    def address(self, delivery: Delivery) -> str:
        return delivery.user.email

    @admin.display(description="SMTP error")
    def smtp_error(self, delivery: Delivery) -> str:
        return Truncator(delivery.last_error).chars(80)

    @admin.display(description="task result")
    def task_result(self, delivery: Delivery) -> str:
        if not delivery.task_id:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', task_results_url(delivery.task_id), delivery.task_id
        )

    @admin.action(description="Resend selected failed mails", permissions=["change"])
    def resend(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        try:
            report = resend_failed_deliveries(ids=ids)
        except ResendInterrupted as error:
            self.message_user(
                request,
                f"Broker unreachable mid-run: resent {len(error.report.rerun)}, "
                f"{error.left_failed} left failed. Try again.",
                messages.ERROR,
            )
            return
        except BrokerUnreachable:
            self.message_user(
                request, "Broker unreachable: nothing was resent.", messages.ERROR
            )
            return
        for reason, skipped in report.skipped.items():
            listed = ", ".join(f"#{pk}" for pk in skipped)
            self.message_user(
                request, f"Not resent ({reason}): {listed}.", messages.WARNING
            )
        if report.suppressed:
            listed = ", ".join(f"#{pk}" for pk in report.suppressed)
            self.message_user(
                request,
                f"Not resent (the address is suppressed; lift it first): {listed}.",
                messages.WARNING,
            )
        if report.rerun:
            self.message_user(
                request,
                f"Resent {len(report.rerun)} failed mail(s).",
                messages.SUCCESS,
            )


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """The suppression list: search it, add an address by hand, lift one."""

    list_display = ("address", "reason", "source", "short_evidence", "created_at")
    list_filter = ("reason", "source", "created_at")
    search_fields = ("address", "evidence")
    date_hierarchy = "created_at"
    fields = ("address", "reason", "source", "evidence", "created_at")
    readonly_fields = ("source", "created_at")
    actions = ["lift"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:  # a listed address changes only by lifting it
            return ("address", "reason", "source", "evidence", "created_at")
        return self.readonly_fields

    def get_changeform_initial_data(self, request):
        return {"reason": Suppression.Reason.MANUAL}

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # lifting is the one way off the list, and it is logged

    def save_model(self, request, obj, form, change) -> None:
        obj.address = suppression.normalize_address(obj.address)
        obj.source = Suppression.Source.ADMIN
        super().save_model(request, obj, form, change)

    @admin.display(description="evidence")
    def short_evidence(self, entry: Suppression) -> str:
        return Truncator(entry.evidence).chars(80)

    @admin.action(description="Lift selected suppressions", permissions=["change"])
    def lift(self, request, queryset) -> None:
        entries = list(queryset)
        LogEntry.objects.log_actions(
            user_id=request.user.pk,
            queryset=entries,
            action_flag=DELETION,
            change_message="Lifted: mail goes to this address again.",
        )
        by = request.user.get_username()
        lifted = sum(
            suppression.lift(address=entry.address, by=by) for entry in entries
        )
        self.message_user(request, f"Lifted {lifted} suppression(s).", messages.SUCCESS)


@admin.register(TrackingEvent)
class TrackingEventAdmin(admin.ModelAdmin):
    """Bounces and complaints the ESP reported, each stored once."""

    list_display = (
        "received_at",
        "esp_name",
        "event_type",
        "reject_reason",
        "recipient",
        "delivery",
    )
    list_filter = ("esp_name", "event_type")
    search_fields = ("recipient", "event_id")
    list_select_related = ("delivery",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class WelcomeMailFilter(admin.SimpleListFilter):
    title = "welcome mail"
    parameter_name = "welcome_mail"

    def lookups(self, request, model_admin):
        return Delivery.Status.choices

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(
            deliveries__kind=Delivery.Kind.WELCOME, deliveries__status=self.value()
        )


class UserWithWelcomeMailAdmin(UserAdmin):
    """The users list, with each person's welcome mail status next to them.

    Lives here, not in users/, because users does not know about mailer.
    """

    list_display = (
        "email",
        "is_active",
        "welcome_mail",
        "activated_at",
        "date_joined",
        "is_staff",
    )
    list_filter = ("is_active", WelcomeMailFilter, "is_staff", "is_superuser")

    def get_queryset(self, request):
        welcome = Delivery.objects.filter(
            user=OuterRef("pk"), kind=Delivery.Kind.WELCOME
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                welcome_status=Subquery(welcome.values("status")[:1]),
                welcome_id=Subquery(welcome.values("pk")[:1]),
            )
        )

    @admin.display(description="welcome mail", ordering="welcome_status")
    def welcome_mail(self, user: User) -> str:
        if user.welcome_id is None:
            return "-"
        url = reverse("admin:mailer_delivery_change", args=[user.welcome_id])
        label = Delivery.Status(user.welcome_status).label
        return format_html('<a href="{}">{}</a>', url, label)


admin.site.unregister(User)
admin.site.register(User, UserWithWelcomeMailAdmin)
